"""Top-a: keep ``p_i >= top_a · p_max²``.

``top_a`` a (neutral 0 = off), in [0, 1]. Like min-p with a threshold that grows with the square of
the top probability: a confident step cuts hard, a flat one keeps more. (BlinkDL; as in
text-generation-webui.)

>>> import torch
>>> p = torch.tensor([[0.5, 0.3, 0.15, 0.04, 0.01]])
>>> (top_a(p.log(), top_a=0.2) > float("-inf")).tolist()
[[True, True, True, False, False]]
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..stage import Knob, Stage
from ._common import NEG_INF, check_logits, col, is_neutral, knob


def _top_a_(x: Tensor, top_a) -> Tensor:
    p = torch.softmax(x, dim=-1)
    pmax = p.amax(-1, keepdim=True)
    return x.masked_fill_((p < col(top_a, x) * pmax * pmax) & (p < pmax), NEG_INF)


def top_a(logits: Tensor, *, top_a=0.0) -> Tensor:
    """Mask tokens with probability below ``top_a · p_max²``."""
    check_logits(logits)
    top_a = knob("top_a", top_a, logits)
    x = logits.clone()
    return x if is_neutral("top_a", top_a) else _top_a_(x, top_a)


STAGE = Stage(
    "top_a", apply=lambda x, batch: _top_a_(x, batch.knob("top_a")),
    paper="BlinkDL (RWKV)", summary="keep p >= a · p_max^2",
    active=lambda p: p.top_a > 0,
    knobs=(Knob("top_a", 0.0, lambda x: 0 <= x <= 1, "[0, 1] (0 = off)",
                "keep tokens with p >= a · p_max^2", flag="--top-a"),))

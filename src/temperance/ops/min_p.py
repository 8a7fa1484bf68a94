"""Min-p: keep tokens at least ``min_p`` times as likely as the most likely one.

``min_p`` (neutral 0 = off), in [0, 1]: keep ``p_i >= min_p · p_max`` (inclusive), i.e. in logit
space ``l_i >= l_max + ln(min_p)``. The cut scales with the model's confidence: strict when it is
sure, permissive when it is not. Applied before temperature (our default order) the kept set does
not depend on T, which is what keeps T = 100 coherent. (Nguyen et al. 2024, "Turning Up the Heat:
Min-p Sampling for Creative and Coherent LLM Outputs", ICLR 2025.)

>>> import torch
>>> p = torch.tensor([[0.5, 0.3, 0.15, 0.04, 0.01]])
>>> (min_p(p.log(), min_p=0.1) > float("-inf")).tolist()
[[True, True, True, False, False]]
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..stage import Knob, Stage
from ._common import NEG_INF, check_logits, col, is_neutral, knob


def threshold(x: Tensor, min_p) -> Tensor:
    """The smallest logit min-p keeps, ``[B, 1]`` (``-inf`` for rows with min_p = 0)."""
    return x.amax(-1, keepdim=True) + torch.log(col(min_p, x))


def _min_p_(x: Tensor, min_p) -> Tensor:
    return x.masked_fill_(x < threshold(x, min_p), NEG_INF)


def min_p(logits: Tensor, *, min_p=0.0) -> Tensor:
    """Mask tokens whose probability is below ``min_p`` times the row's top probability."""
    check_logits(logits)
    min_p = knob("min_p", min_p, logits)
    x = logits.clone()
    return x if is_neutral("min_p", min_p) else _min_p_(x, min_p)


STAGE = Stage(
    "min_p", apply=lambda x, batch: _min_p_(x, batch.knob("min_p")),
    compact=lambda x, batch: _candidates().at_least(x, threshold(x, batch.knob("min_p"))),
    paper="Nguyen et al. 2024, arXiv 2407.01082", summary="keep p >= min_p · p_max (inclusive)",
    active=lambda p: p.min_p > 0,
    knobs=(Knob("min_p", 0.0, lambda x: 0 <= x <= 1, "[0, 1] (0 = off)",
                "keep tokens at least min_p times as likely as the top one", flag="--min-p"),))


def _candidates():
    from ..candidates import Candidates  # candidates imports ops: keep the import edge one-way

    return Candidates

"""Locally typical sampling: keep the tokens whose surprise is closest to the expected surprise.

``typical_p`` τ (neutral 1.0 = off), in (0, 1]. With H the entropy, score each token by
``|−ln p_i − H|``; sort ascending (stable: ties by token id) and keep the shortest prefix whose mass
reaches τ (inclusive, as transformers). The most likely token can be dropped. (Meister et al. 2022,
"Locally Typical Sampling", TACL 2023.)

>>> import torch
>>> p = torch.tensor([[0.4, 0.2, 0.2, 0.2]])
>>> (typical_p(p.log(), typical_p=0.5) > float("-inf")).tolist()
[[False, True, True, True]]
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..stage import Knob, Stage
from ._common import NEG_INF, check_logits, col, is_neutral, knob


def _typical_p_(x: Tensor, typical_p) -> Tensor:
    tau = col(typical_p, x)
    logp = torch.log_softmax(x, dim=-1)
    p = logp.exp()
    H = -torch.where(p > 0, p * logp, 0.0).sum(-1, keepdim=True)
    score = torch.where(torch.isfinite(x), (-logp - H).abs(), torch.inf)
    s, order = torch.sort(score, dim=-1, stable=True)
    cum = p.gather(1, order).double().cumsum(-1)
    n = (cum < tau.double()).sum(-1, keepdim=True) + 1  # include the token that reaches tau
    keep_sorted = torch.arange(x.shape[1], device=x.device) < n
    keep = torch.zeros_like(keep_sorted).scatter_(1, order, keep_sorted)
    keep |= tau >= 1
    return x.masked_fill_(~keep, NEG_INF)


def typical_p(logits: Tensor, *, typical_p=1.0) -> Tensor:
    """Keep the locally typical set of mass ``typical_p``."""
    check_logits(logits)
    typical_p = knob("typical_p", typical_p, logits)
    x = logits.clone()
    return x if is_neutral("typical_p", typical_p) else _typical_p_(x, typical_p)


STAGE = Stage(
    "typical_p", apply=lambda x, batch: _typical_p_(x, batch.knob("typical_p")),
    aliases=("typical", "typ_p"), paper="Meister et al. 2022, Locally Typical Sampling",
    summary="keep the locally typical set of mass p",
    active=lambda p: p.typical_p < 1,
    knobs=(Knob("typical_p", 1.0, lambda x: 0 < x <= 1, "(0, 1] (1 = off)",
                "keep tokens whose surprise is closest to the entropy, up to mass p",
                flag="--typical", request=("typical_p", "typical")),))

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
from . import _native
from ._common import NEG_INF, check_logits, col, is_neutral, knob


def threshold(x: Tensor, min_p, m: Tensor | None = None) -> Tensor:
    """The smallest logit min-p keeps, ``[B, 1]`` (``-inf`` for rows with min_p = 0); ``m``: the
    row maxima, if the caller has them."""
    m = x.amax(-1, keepdim=True) if m is None else m
    return m + torch.log(col(min_p, x))


def candidates(x: Tensor, min_p):
    """The min-p survivors of dense ``x`` as `Candidates`: one chunked max pass finds the row
    maxima and which chunks of 128 can hold a survivor; only those are read again."""
    from ..candidates import Candidates, chunk_max  # candidates imports ops: keep the edge one-way

    if _native.usable(x):  # one max pass, then one counting and one copying pass per row
        return Candidates(*_native.at_least(x, threshold(x, min_p)), x.shape[1])
    cmax = chunk_max(x)
    return Candidates.at_least(x, threshold(x, min_p, cmax.amax(-1, keepdim=True)), cmax)


def _min_p_(x: Tensor, min_p) -> Tensor:
    """Min-p on ``x`` in place (x is the caller's own working tensor)."""
    if _native.usable(x):
        y = _native.min_p_dense(x, torch.log(col(min_p, x)), out=x)
        if y is not None:
            return y
    if x.shape[1] <= 4096:  # short rows (the chain's survivors): a plain mask is fewest ops
        return x.masked_fill_(x < threshold(x, min_p), NEG_INF)
    return candidates(x, min_p).into(x)


def min_p(logits: Tensor, *, min_p=0.0) -> Tensor:
    """Mask tokens whose probability is below ``min_p`` times the row's top probability."""
    check_logits(logits)
    min_p = knob("min_p", min_p, logits)
    if is_neutral("min_p", min_p):
        return logits.clone()
    if _native.usable(logits):
        y = _native.min_p_dense(logits, torch.log(col(min_p, logits)))
        if y is not None:
            return y
    return candidates(logits, min_p).dense()


STAGE = Stage(
    "min_p", apply=lambda x, batch: _min_p_(x, batch.knob("min_p")),
    compact=lambda x, batch: candidates(x, batch.knob("min_p")),
    paper="Nguyen et al. 2024, arXiv 2407.01082", summary="keep p >= min_p · p_max (inclusive)",
    active=lambda p: p.min_p > 0,
    knobs=(Knob("min_p", 0.0, lambda x: 0 <= x <= 1, "[0, 1] (0 = off)",
                "keep tokens at least min_p times as likely as the top one", flag="--min-p"),))


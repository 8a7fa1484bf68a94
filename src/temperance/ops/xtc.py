"""XTC ("Exclude Top Choices"): sometimes remove the most likely tokens to break clichés.

``xtc_probability`` (neutral 0 = off) is the chance, per row and step, that XTC acts;
``xtc_threshold`` (0.1; > 0.5 = off, since then at most one token can pass). When it acts and at
least two tokens have ``p >= xtc_threshold``, all of them are removed except the least probable one
(ties: the highest token id, the last in our stable order). Pair it with a truncation sampler such
as min-p, which removes the garbage first. (p-e-w, text-generation-webui PR #6335.)

The coin is counter-based noise keyed by the row's ``(seed, step)``, so XTC, like the draw, does not
depend on the rest of the batch.

>>> import torch
>>> p = torch.tensor([[0.5, 0.3, 0.15, 0.04, 0.01]])
>>> (xtc(p.log(), xtc_probability=1.0, xtc_threshold=0.1, seed=0) > float("-inf")).tolist()
[[False, False, True, True, True]]
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import noise
from ..stage import Knob, Stage
from ._common import NEG_INF, check_logits, col, is_neutral, knob


def _xtc_(x: Tensor, xtc_probability, xtc_threshold, seed: Tensor, step: Tensor) -> Tensor:
    prob, thr = col(xtc_probability, x).double(), col(xtc_threshold, x)
    act = noise.coin(seed, step, noise.SALT_XTC).view(-1, 1) < prob
    act &= thr <= 0.5
    p = torch.softmax(x, dim=-1)
    above = (p >= thr) & torch.isfinite(x)  # a masked token (p = 0) never counts, even at 0
    act &= above.sum(-1, keepdim=True) >= 2
    if not bool(act.any()):
        return x
    low = torch.where(above, x, torch.inf).amin(-1, keepdim=True)
    ids = torch.arange(x.shape[1], device=x.device)
    last = torch.where(above & (x == low), ids, -1).amax(-1, keepdim=True)  # highest id among ties
    return x.masked_fill_(above & (ids != last) & act, NEG_INF)


def xtc(logits: Tensor, *, xtc_probability=0.0, xtc_threshold=0.1, seed=0, step=0) -> Tensor:
    """Exclude the top choices with probability ``xtc_probability``; ``seed``/``step``: int or [B]."""
    check_logits(logits)
    xtc_probability = knob("xtc_probability", xtc_probability, logits)
    xtc_threshold = knob("xtc_threshold", xtc_threshold, logits)
    x = logits.clone()
    if is_neutral("xtc_probability", xtc_probability):
        return x
    B = x.shape[0]
    seed = torch.as_tensor(seed, dtype=torch.int64).expand(B)
    step = torch.as_tensor(step, dtype=torch.int64).expand(B)
    return _xtc_(x, xtc_probability, xtc_threshold, seed, step)


def _stage_(x: Tensor, batch) -> Tensor:
    return _xtc_(x, batch.knob("xtc_probability"), batch.knob("xtc_threshold"), batch.seed, batch.step)


STAGE = Stage(
    "xtc", apply=_stage_, paper="p-e-w, text-generation-webui #6335",
    summary="sometimes remove all top choices but the least likely",
    active=lambda p: p.xtc_probability > 0 and p.xtc_threshold <= 0.5,
    knobs=(
        Knob("xtc_probability", 0.0, lambda x: 0 <= x <= 1, "[0, 1] (0 = off)",
             "chance per step that XTC acts", flag="--xtc-probability"),
        Knob("xtc_threshold", 0.1, lambda x: 0 <= x <= 1, "[0, 1] (> 0.5 = off)",
             "tokens with p >= threshold are top choices", flag="--xtc-threshold"),
    ))

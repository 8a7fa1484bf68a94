"""Tail-free sampling: cut where the sorted probability curve flattens out.

``tfs_z`` z (neutral 1.0 = off), in [0, 1]. The original rule, as llama.cpp implemented it
(Trenton Bricken, 2019, "Tail-Free Sampling"), on the tokens that are still candidates:

1. softmax over the finite logits, sorted descending: ``q_0 >= q_1 >= ... >= q_{n-1}``;
2. absolute second differences ``d_i = |q_i − 2·q_{i+1} + q_{i+2}|``, ``i = 0 .. n−3``;
3. normalised to sum 1 (a curve with no curvature, ``Σ d <= 1e-6``, counts every ``d_i`` as
   ``1/(n−2)``) and accumulated: ``W_i``;
4. sorted token ``i`` is kept while ``W_i <= z``: the cut is the first ``i >= 1`` with ``W_i > z``
   (token 0 always stays: ``min_keep = 1``). With no such ``i`` every token stays.

Rows with at most 2 candidates and ``z = 1`` are left alone. Masked tokens are not candidates, so
the result does not depend on how many removed tokens the row carries (it runs on compacted rows
too). Ties sort by lower token id. Computed in float64.

>>> import torch
>>> p = torch.tensor([[0.5, 0.3, 0.15, 0.04, 0.01]])   # d = (.05, .04, .08) -> W = (.29, .53, 1)
>>> (tfs(p.log(), tfs_z=0.95) > float("-inf")).tolist()
[[True, True, False, False, False]]
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..stage import Knob, Stage
from ._common import NEG_INF, check_logits, col, is_neutral, knob


def _tfs_(x: Tensor, tfs_z) -> Tensor:
    B, V = x.shape
    if V < 3:
        return x
    z = col(tfs_z, x, torch.float64)
    q, order = torch.sort(torch.softmax(x.double(), dim=-1), dim=-1, descending=True, stable=True)
    n = torch.isfinite(x).sum(-1, keepdim=True)           # candidates per row
    i = torch.arange(V - 2, device=x.device)
    valid = i < n - 2                                      # d_i needs tokens i, i+1, i+2
    d = q.diff().diff().abs().masked_fill_(~valid, 0.0)
    total = d.sum(-1, keepdim=True)
    w = torch.where(total > 1e-6, d / total, valid / (n - 2).clamp(min=1))
    cross = (w.cumsum(-1) > z) & valid & (i >= 1)
    cut = torch.where(cross.any(-1, keepdim=True), cross.to(torch.int8).argmax(-1, keepdim=True), n)
    keep_sorted = (torch.arange(V, device=x.device) < cut) | (z >= 1) | (n <= 2)
    keep = torch.zeros_like(keep_sorted).scatter_(1, order, keep_sorted)
    return x.masked_fill_(~keep, NEG_INF)


def tfs(logits: Tensor, *, tfs_z=1.0) -> Tensor:
    """Tail-free sampling with parameter ``tfs_z``."""
    check_logits(logits)
    tfs_z = knob("tfs_z", tfs_z, logits)
    x = logits.clone()
    return x if is_neutral("tfs_z", tfs_z) else _tfs_(x, tfs_z)


STAGE = Stage(
    "tfs", apply=lambda x, batch: _tfs_(x, batch.knob("tfs_z")),
    aliases=("tail_free", "tfs_z"), paper="Bricken 2019, Tail-Free Sampling",
    summary="tail-free sampling: cut where the sorted probabilities flatten out",
    active=lambda p: p.tfs_z < 1,
    knobs=(Knob("tfs_z", 1.0, lambda x: 0 <= x <= 1, "[0, 1] (1 = off)",
                "keep sorted tokens while the normalised curvature sums to <= z", flag="--tfs"),))

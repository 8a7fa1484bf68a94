"""Tail-free sampling: cut where the sorted probability curve flattens out.

``tfs_z`` z (neutral 1.0 = off), in [0, 1]. Sort probabilities descending (q), take the absolute
second differences ``|q_{i+2} − 2q_{i+1} + q_i|``, normalise them to sum 1 and accumulate (W). The
first token is always kept, the last always dropped, and sorted token j in between is dropped when
``W_{j−1} > z`` (text-generation-webui's alignment). Rows with fewer than 3 tokens, or a flat or
linear curve (no curvature), are left alone. Masked tokens count as probability 0, so the result
depends on the row length: use TFS on the full vocabulary, as it was designed. (Trenton Bricken,
2019, "Tail-Free Sampling".)

>>> import torch
>>> p = torch.tensor([[0.5, 0.3, 0.15, 0.04, 0.01]])
>>> (tfs(p.log(), tfs_z=0.95) > float("-inf")).tolist()
[[True, True, True, False, False]]
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
    z = col(tfs_z, x)
    q, order = torch.sort(torch.softmax(x, dim=-1), dim=-1, descending=True, stable=True)
    d2 = q.diff().diff().abs()
    total = d2.sum(-1, keepdim=True)
    W = (d2 / total).cumsum(-1)
    drop = torch.cat([torch.zeros_like(W[:, :1], dtype=torch.bool), W > z,
                      torch.ones_like(W[:, :1], dtype=torch.bool)], dim=1)
    drop &= (z < 1) & (total > 0)
    keep = torch.zeros_like(drop).scatter_(1, order, ~drop)
    return x.masked_fill_(~keep, NEG_INF)


def tfs(logits: Tensor, *, tfs_z=1.0) -> Tensor:
    """Tail-free sampling with parameter ``tfs_z``."""
    check_logits(logits)
    tfs_z = knob("tfs_z", tfs_z, logits)
    x = logits.clone()
    return x if is_neutral("tfs_z", tfs_z) else _tfs_(x, tfs_z)


STAGE = Stage(
    "tfs", apply=lambda x, batch: _tfs_(x, batch.knob("tfs_z")), row_length=True,
    aliases=("tail_free", "tfs_z"), paper="Bricken 2019, Tail-Free Sampling",
    summary="tail-free sampling: cut where the sorted probabilities flatten out",
    active=lambda p: p.tfs_z < 1,
    knobs=(Knob("tfs_z", 1.0, lambda x: 0 <= x <= 1, "[0, 1] (1 = off)",
                "keep sorted tokens while the normalised curvature sums to <= z", flag="--tfs"),))

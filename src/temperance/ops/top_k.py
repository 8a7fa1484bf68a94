"""Top-k: keep the k most likely tokens.

``top_k`` (neutral 0 = off; k >= V is off too) keeps exactly k tokens: the k largest logits, ties
at the boundary broken by lower token id (llama.cpp cuts by rank; HF would keep every tied token).
(Fan et al. 2018, "Hierarchical Neural Story Generation".)

>>> import torch
>>> top_k(torch.tensor([[1.0, 3.0, 2.0, 3.0]]), top_k=2)
tensor([[-inf, 3., -inf, 3.]])
>>> top_k(torch.tensor([[1.0, 2.0, 2.0, 2.0]]), top_k=2)   # tie at the boundary: lower ids win
tensor([[-inf, 2., 2., -inf]])
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..stage import Knob, Stage
from . import _native
from ._common import NEG_INF, check_logits, col, knob
from ._common import compact as _compact
from ._topk import chunked_topk


def _top_k_(x: Tensor, top_k) -> Tensor:
    """Top-k on ``x`` in place (x is the caller's own working tensor)."""
    if _native.usable(x) and _native.topk_dense(x, torch.as_tensor(top_k), out=x) is not None:
        return x
    B, V = x.shape
    k = col(top_k, x, torch.int64)  # [B, 1]
    k = torch.where((k <= 0) | (k >= V), V, k)
    kmax = int(k.max())
    if kmax >= V:
        if bool((k >= V).all()):
            return x
        kmax = V
    vals, _ = chunked_topk(x, min(kmax + 1, V))
    vals = torch.cat([vals, vals.new_full((B, 1), NEG_INF)], dim=1)  # so k == V can index
    kth = vals.gather(1, k - 1)                 # the k-th largest value
    after = vals.gather(1, k)                   # the (k+1)-th: equal to kth means a boundary tie
    keep = x >= kth
    tied = (after == kth) & (k < V) & torch.isfinite(kth)
    if bool(tied.any()):  # more tokens equal the k-th value than fit: lowest ids win
        rows = tied.view(-1).nonzero().view(-1)
        xr = x[rows]
        eq = xr == kth[rows]
        need = k[rows] - (xr > kth[rows]).sum(-1, keepdim=True)
        keep[rows] = (xr > kth[rows]) | (eq & (eq.cumsum(-1) <= need))
    keep |= k >= V
    return x.masked_fill_(~keep, NEG_INF)


def top_k(logits: Tensor, *, top_k=0) -> Tensor:
    """Keep the ``top_k`` largest logits of each row (exactly k; ties → lower token id)."""
    check_logits(logits)
    top_k = knob("top_k", top_k, logits)
    if _native.usable(logits):
        y = _native.topk_dense(logits, torch.as_tensor(top_k))
        if y is not None:
            return y
    return _top_k_(logits.clone(), top_k)


def compact(x: Tensor, top_k) -> "Candidates":  # noqa: F821
    """Exactly the top-k survivors of dense ``x`` as `Candidates`, from a chunked top-k (every row
    must have 0 < k < V). A tie at the k-th value goes to the lowest ids: only those rows look at
    the whole row again."""
    from ..candidates import Candidates  # candidates imports ops: keep the import edge one-way

    B, V = x.shape
    k = col(top_k, x, torch.int64)
    kmax = int(k.max())
    exact = _native.topk(x, kmax) if _native.usable(x) else None  # ties already to the lowest ids
    if exact is not None:
        vals, ids = exact
        tied = torch.zeros(1, dtype=torch.bool)
    else:
        vals, ids = chunked_topk(x, min(kmax + 1, V))
        kth = vals.gather(1, k - 1)
        tied = (vals.gather(1, k) == kth) & torch.isfinite(kth)
        vals, ids = vals[:, :kmax], ids[:, :kmax]
    if bool(tied.any()):  # torch.topk picks any of the tied ids: take the lowest ones instead
        rows = tied.view(-1).nonzero().view(-1)
        xr, kr, vr = x[rows], kth[rows], vals[rows]
        greater = (vr > kr).sum(-1, keepdim=True)  # all of them are in the top k, first
        _, tie_ids = _compact(xr, xr == kr)         # ascending ids
        j = torch.arange(kmax, device=x.device) - greater
        fill = (j >= 0) & (j < k[rows] - greater)
        tid = tie_ids.gather(1, j.clamp(0, tie_ids.shape[1] - 1))
        ids[rows] = torch.where(fill, tid, ids[rows])
        vals[rows] = torch.where(fill, kr.to(vals.dtype), vr)
    past = torch.arange(kmax, device=x.device) >= k  # slots past a row's own k: padding
    vals, ids = vals.masked_fill(past, NEG_INF), ids.masked_fill(past, V)
    ids, order = torch.sort(ids, dim=-1)
    return Candidates(vals.gather(1, order), ids, V)


STAGE = Stage(
    "top_k", apply=lambda x, batch: _top_k_(x, batch.knob("top_k")),
    compact=lambda x, batch: compact(x, batch.knob("top_k")),
    paper="Fan et al. 2018", summary="exactly k tokens; ties -> lower token id",
    active=lambda p: p.top_k > 0,
    knobs=(Knob("top_k", 0, lambda x: x >= 0, "integers >= 0 (0 = off)",
                "keep the k most likely tokens", flag="--top-k", integer=True),))

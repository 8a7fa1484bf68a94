"""Mass cuts: keep the shortest prefix of a row, in some key order, whose probability mass reaches a
target. Top-p (key = −logit) and typical (key = |logit − E_p[logit]|) are both such cuts.

The rule, shared by both: order the finite tokens by key ascending, ties by lower token id; keep the
shortest prefix whose mass, rounded to float32, reaches the float32 target ``p`` — i.e. mass
``>= p − ½ ulp`` (`goal`). That is "reaches p within float32 rounding of p", where transformers' and
llama.cpp's float32 sums agree: p = (0.3, 0.1, 0.1, 0.5) with top_p = 0.8 keeps {0.5, 0.3}, whose
mass is 0.8 up to rounding, although 0.8 as a float32 is 0.800000012. ``p = 0`` keeps the first
token. Masses are ``exp(x − max)`` in float64 against a float64 normaliser.

A cut is reported as ``(kstar, q)``: keep every token with key < kstar, plus the first q tokens (in
token-id order) with key == kstar. The reference implementation here is pure torch (any device): a
mass histogram of the keys finds the bin holding the crossing token and only that bin is sorted.
On CPU float32 rows `temperance.ops._native` does the same in one C++ pass per row; tests check that
both keep identical sets.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._common import compact

ALL = 2**62  # q for "every tie"
SPAN = 80.0  # keys more than this (nats) past the interesting range share the last histogram bin
SORTED = 512  # rows up to this long are cut by one sort


def goal(p: Tensor) -> Tensor:
    """The mass a row must reach, as a fraction, ``[B, 1]`` float64: the midpoint between the
    float32 ``p`` and the float32 below it. Rows with ``p >= 1`` get 2 (keep everything)."""
    p = p.to(torch.float32).view(-1, 1)
    below = torch.nextafter(p, torch.tensor(-1.0, device=p.device))
    return torch.where(p >= 1, 2.0, (p.double() + below.double()) / 2)


def prefix_cut(key: Tensor, w: Tensor, target: Tensor, span: Tensor | None = None,
               bins: int = 1024) -> tuple[Tensor, Tensor]:
    """``(kstar, q)`` ``[B, 1]`` of the shortest prefix in (key ascending, position) order whose mass
    ``w`` (float64, 0 where absent) reaches ``target`` (``[B, 1]``, same units as w). ``key``: +inf
    where absent. ``span``: keys above ``min key + span`` share the last bin (speed only). Rows whose
    whole mass falls short keep every present entry."""
    B, W = key.shape
    if W <= SORTED:
        return _sorted_cut(key, w, target)
    present = torch.isfinite(key)
    lo = torch.where(present, key, torch.inf).amin(-1, keepdim=True)
    hi = torch.where(present, key, -torch.inf).amax(-1, keepdim=True)
    width = hi - lo if span is None else torch.minimum(hi - lo, span.to(key.dtype))
    scale = torch.where(width > 0, (bins - 1) / width, 1.0)
    b = ((key - lo) * scale).nan_to_num_(nan=bins - 1, posinf=bins - 1).clamp_(0, bins - 1).long()
    rows = torch.arange(B, device=key.device).view(-1, 1) * bins
    hist = torch.zeros(B * bins, dtype=torch.float64, device=key.device)
    hist = hist.index_add_(0, (rows + b).view(-1), w.reshape(-1)).view(B, bins)
    csum = hist.cumsum(-1)                                            # mass of bins <= i
    cut = (csum < target).sum(-1, keepdim=True).clamp_(max=bins - 1)  # the bin of the crossing
    before = torch.cat([csum.new_zeros(B, 1), csum], 1).gather(1, cut)
    band_vals, band_pos = compact(key, (b == cut) & present)          # position order
    band_vals = band_vals.masked_fill_(band_pos >= W, torch.inf)      # padding sorts last
    vals, order = torch.sort(band_vals, dim=-1, stable=True)          # key, then position
    pos = band_pos.gather(1, order)
    cum = before + w.gather(1, pos.clamp(max=W - 1)).masked_fill_(~torch.isfinite(vals), 0.0).cumsum(-1)
    nb = torch.isfinite(vals).sum(-1, keepdim=True).clamp_(min=1)
    take = ((cum < target).sum(-1, keepdim=True) + 1).clamp_(max=nb)  # include the crossing one
    kstar = vals.gather(1, take - 1)
    i = torch.arange(vals.shape[1], device=key.device)
    q = ((vals == kstar) & (i < take)).sum(-1, keepdim=True)
    more = (vals == kstar) & (i >= take)                               # ties left out
    q = torch.where(more.any(-1, keepdim=True), q, ALL)
    short = csum[:, -1:] < target                                      # keep every present entry
    return torch.where(short, hi, kstar), torch.where(short, ALL, q)


def _sorted_cut(key: Tensor, w: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """`prefix_cut` for short rows: one stable sort of the whole row (fewer ops than the histogram)."""
    vals, order = torch.sort(key, dim=-1, stable=True)  # key, then position; absent (+inf) last
    cum = w.gather(1, order).cumsum(-1)
    n = torch.isfinite(vals).sum(-1, keepdim=True).clamp_(min=1)
    take = ((cum < target).sum(-1, keepdim=True) + 1).clamp_(max=n)
    kstar = vals.gather(1, take - 1)
    i = torch.arange(key.shape[1], device=key.device)
    tie = vals == kstar
    q = torch.where((tie & (i >= take)).any(-1, keepdim=True), (tie & (i < take)).sum(-1, keepdim=True), ALL)
    short = cum[:, -1:] < target
    return torch.where(short, vals.gather(1, n - 1), kstar), torch.where(short, ALL, q)


def kept(key: Tensor, kstar: Tensor, q: Tensor) -> Tensor:
    """The mask of a cut: key < kstar, plus the first q entries with key == kstar."""
    keep = key <= kstar
    partial = q < ALL
    if bool(partial.any()):
        eq = key == kstar
        keep &= ~eq | (eq.cumsum(-1) <= q)
    return keep

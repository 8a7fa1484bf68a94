"""Top-p (nucleus): keep the smallest set of most likely tokens whose mass reaches p.

``top_p`` (neutral 1.0 = off), in (0, 1]. Sort descending (stable: ties by token id), keep the
shortest prefix whose cumulative probability reaches p, *including* the token that crosses it.
(Holtzman et al. 2019, "The Curious Case of Neural Text Degeneration".)

No full sort of the vocabulary: the exact cut is searched on a window of the largest logits that
grows until it holds mass p (the nucleus of a real LM is usually tens of tokens). Masses are summed
in float64 against a float64 normaliser, so the cut agrees with a float64 reference.

>>> import torch
>>> p = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
>>> torch.softmax(top_p(p.log(), top_p=0.7), -1)
tensor([[0.0000, 0.0000, 0.4286, 0.5714]])
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..stage import Knob, Stage
from ._common import NEG_INF, compact, check_logits, col, is_neutral, knob
from ._topk import chunked_topk

WINDOW = 256


def normaliser(x: Tensor, m: Tensor, rows: int = 8) -> Tensor:
    """``sum(exp(x - m))`` per row in float64 (the difference too: in float32 it is off by ~1e-7),
    ``[B, 1]``. Eight rows at a time through one small buffer: one float64 copy of all of x would
    cost ~8x more here (page faults on a fresh allocation of 8·B·V bytes)."""
    B, V = x.shape
    z = torch.empty(B, 1, dtype=torch.float64, device=x.device)
    buf = torch.empty(min(rows, B), V, dtype=torch.float64, device=x.device)
    for i in range(0, B, rows):
        b = buf[: min(rows, B - i)]
        z[i:i + rows] = b.copy_(x[i:i + rows]).sub_(m[i:i + rows].double()).exp_().sum(-1, keepdim=True)
    return z


def nucleus_size(x: Tensor, top_p: Tensor, z: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """How many tokens each row keeps, the value of the last kept one, and the value after it
    (``[B, 1]`` each; "after" equals "last" when it is unknown, which flags a possible tie).

    ``z`` overrides the normaliser: ``sum(exp(x - max))`` over the *whole* row, float64 — used
    when ``x`` holds only a candidate subset of the row.
    """
    B, V = x.shape
    m = x.amax(-1, keepdim=True)
    if z is None:
        z = normaliser(x, m)
    target = top_p.double() * z
    W = min(WINDOW, V)
    while True:
        v, _ = chunked_topk(x, W)
        cum = torch.exp(v.double() - m.double()).cumsum(-1)
        short = (cum < target).sum(-1, keepdim=True)  # tokens before the one that crosses p
        if W == V or bool((short < W).all()):
            break
        W = min(W * 8, V)
    n = (short + 1).clamp(max=W)
    last = v.gather(1, n - 1)
    padded = torch.cat([v, last if W < V else v.new_full((B, 1), NEG_INF)], dim=1)
    return n, last, padded.gather(1, n)


def nucleus_candidates(x: Tensor, top_p) -> "Candidates":  # noqa: F821
    """The exact top-p survivors of dense ``x`` ``[B, V]`` as `Candidates`, without a sort of V.

    1. Estimate the logit t above which a little more than mass p lies: the 64 largest logits are
       counted exactly, the rest of the mass curve comes from a strided sample of ~4k logits,
       rescaled so that the estimate's total equals the true normaliser.
    2. Extract every token >= t (one compare and a nonzero). A row whose extracted mass falls
       short of p retries lower, and finally takes every token, so the result is always exact.
    3. Make the exact cut on that set (`_cut`): a 1024-bin mass histogram finds the bin holding the
       crossing token; only that bin is sorted.
    """
    from ..candidates import Candidates  # candidates imports ops; keep the edge one-way at import

    B, V = x.shape
    p = col(top_p, x).double()
    m = x.amax(-1, keepdim=True)
    z = normaliser(x, m)
    head, _ = chunked_topk(x, min(64, V))
    head_mass = torch.exp(head.double() - m.double()).cumsum(-1)
    stride = max(1, V // 2048)
    sample, _ = torch.sort(x[:, ::stride], dim=-1, descending=True)
    tail = torch.where(sample < head[:, -1:], torch.exp(sample.double() - m.double()), 0.0).cumsum(-1)
    tail = tail * ((z - head_mass[:, -1:]).clamp(min=0) / tail[:, -1:].clamp(min=1e-300))
    goal = (p + (1 - p) / 4) * z  # aim past p so that the extracted set holds the nucleus
    in_head = head_mass[:, -1:] >= goal
    j = (head_mass[:, -1:] + tail < goal).sum(-1, keepdim=True)
    t = torch.where(in_head, head.gather(1, (head_mass < goal).sum(-1, keepdim=True).clamp(
        max=head.shape[1] - 1)), sample.gather(1, (j + 16).clamp(max=sample.shape[1] - 1)))
    for attempt in range(3):
        c = Candidates.where(x, x >= t)
        e = torch.exp(c.logits.double() - m.double())  # 0 for -inf padding
        short = e.sum(-1, keepdim=True) < p * z * (1 - 1e-9)
        if not bool(short.any()):
            break
        lower = sample.gather(1, (2 * j + 64).clamp(max=sample.shape[1] - 1))
        t = torch.where(short, lower if attempt == 0 else torch.full_like(t, float("-inf")), t)
    c.logits = c.logits.masked_fill_(~_cut(c.logits, e, p, z, m), NEG_INF)
    return c


def _cut(c: Tensor, e: Tensor, p: Tensor, z: Tensor, m: Tensor, bins: int = 1024) -> Tensor:
    """Which entries of candidate rows ``c`` ``[B, K]`` (a superset of the nucleus, in token-id
    order; ``e = exp(c - m)`` in float64) top-p keeps, given the full rows' max ``m`` and
    normaliser ``z``."""
    B, K = c.shape
    lo = torch.where(torch.isfinite(c), c, torch.inf).amin(-1, keepdim=True)
    width = (m - lo).clamp(min=1e-30)
    b = ((c - lo) / width * bins).floor().clamp_(0, bins - 1).nan_to_num_(0).to(torch.int64)
    flat = (torch.arange(B, device=c.device).view(-1, 1) * bins + b).view(-1)
    hist = torch.zeros(B * bins, dtype=torch.float64, device=c.device).index_add_(0, flat, e.view(-1))
    above = hist.view(B, bins).flip(-1).cumsum(-1).flip(-1)     # mass of bins >= i
    target = p * z
    cut = ((above >= target).sum(-1, keepdim=True) - 1).clamp(min=0)  # bin of the crossing token
    mass_over = torch.cat([above[:, 1:], above.new_zeros(B, 1)], 1).gather(1, cut)
    band = (b == cut) & torch.isfinite(c)
    # Sort only the band (descending value, ties by position = token id); take the shortest prefix.
    band_vals, band_pos = compact(c, band)              # [B, nb], positions ascending, pad = K
    vals, order = torch.sort(band_vals, dim=-1, descending=True, stable=True)
    pos = band_pos.gather(1, order)
    cum = mass_over + e.gather(1, pos.clamp(max=K - 1)).masked_fill_(~torch.isfinite(vals), 0.0).cumsum(-1)
    take = (cum < target).sum(-1, keepdim=True) + 1     # include the crossing token
    kept_pos = torch.where(torch.arange(vals.shape[1], device=c.device) < take, pos, K)
    in_band_kept = torch.zeros(B, K + 1, dtype=torch.bool, device=c.device).scatter_(1, kept_pos, True)
    in_band_kept = in_band_kept[:, :K] & band
    keep = (b > cut) & torch.isfinite(c) | in_band_kept
    return keep | (p >= 1)


def _top_p_(x: Tensor, top_p, z: Tensor | None = None) -> Tensor:
    p = col(top_p, x)
    n, last, after = nucleus_size(x, p, z)
    keep = x >= last
    # Ties at the boundary value: keep only as many (lowest ids first) as the prefix holds.
    over = (after == last) & (p < 1)
    if bool(over.any()):
        rows = over.view(-1).nonzero().view(-1)
        xr, lr = x[rows], last[rows]
        eq = xr == lr
        need = n[rows] - (xr > lr).sum(-1, keepdim=True)
        keep[rows] = (xr > lr) | (eq & (eq.cumsum(-1) <= need))
    keep |= p >= 1
    return x.masked_fill_(~keep, NEG_INF)


def top_p(logits: Tensor, *, top_p=1.0) -> Tensor:
    """Keep the nucleus of mass ``top_p`` of each row."""
    check_logits(logits)
    top_p = knob("top_p", top_p, logits)
    x = logits.clone()
    return x if is_neutral("top_p", top_p) else _top_p_(x, top_p)


STAGE = Stage(
    "top_p", apply=lambda x, batch: _top_p_(x, batch.knob("top_p")),
    compact=lambda x, batch: nucleus_candidates(x, batch.knob("top_p")),
    aliases=("nucleus",), paper="Holtzman et al. 2019", summary="nucleus, including the crossing token",
    active=lambda p: p.top_p < 1,
    knobs=(Knob("top_p", 1.0, lambda x: 0 < x <= 1, "(0, 1] (1 = off)",
                "keep the most likely tokens up to probability mass p", flag="--top-p"),))

"""Top-nσ: keep logits within n standard deviations of the maximum.

``top_n_sigma`` n (neutral 0; n <= 0 = off): keep ``l_i >= max − n·σ`` where mean and *population*
σ are taken over the finite logits only. Scaling every logit by 1/T scales the gap and σ alike, so
the kept set does not depend on temperature. No sort, no softmax. (Tang et al. 2024, "Top-nσ: Not
All Logits Are You Need", arXiv 2411.07641; llama.cpp PR #11223.)

>>> import torch
>>> p = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
>>> torch.softmax(top_n_sigma(p.log(), top_n_sigma=1.0), -1)
tensor([[0.0000, 0.0000, 0.4286, 0.5714]])
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..stage import Knob, Stage
from . import _native
from ._common import NEG_INF, check_logits, col, is_neutral, knob


def _moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and population variance over the finite entries of each row, in float64 (the native
    kernel where it runs; this code is the reference).

    Blocks of rows small enough that the temporaries stay in cache (a fresh [B, V] temporary per
    op costs more than the arithmetic); a block with no masked entry (raw logits: the usual case)
    skips the mask, with the same arithmetic and so the same bits."""
    if _native.usable(x):
        return _native.moments(x)
    B, V = x.shape
    step = max(1, (1 << 17) // max(V, 1))
    if B > step:
        parts = [_moments(x[i:i + step]) for i in range(0, B, step)]
        return torch.cat([m for m, _ in parts]), torch.cat([v for _, v in parts])
    xd = x.double()
    if bool((x.amin(-1) > NEG_INF).all()):
        mean = xd.sum(-1, keepdim=True) / V
        return mean, ((xd - mean) ** 2).sum(-1, keepdim=True) / V
    finite = torch.isfinite(xd)
    count = finite.sum(-1, keepdim=True).double()
    mean = torch.where(finite, xd, 0.0).sum(-1, keepdim=True) / count
    return mean, (torch.where(finite, xd - mean, 0.0) ** 2).sum(-1, keepdim=True) / count


def threshold(x: Tensor, top_n_sigma) -> Tensor:
    """The smallest logit top-nσ keeps, ``[B, 1]`` in x's dtype (``-inf`` for rows with n <= 0).

    Computed in float64 and rounded *up* to x's dtype, so ``x >= threshold`` is exactly the float64
    test ``x >= max − n·σ``: scaling the logits by 1/T (temperature first) then moves the kept set
    only where a logit lies within the rounding of x/T itself, not wherever a float32 threshold
    happens to round onto a logit. σ = 0 (every finite logit equals the max) keeps them all."""
    n = col(top_n_sigma, x, torch.float64)
    sd = _moments(x)[1].sqrt()
    t = x.amax(-1, keepdim=True).double() - torch.where(sd > 0, n * sd, 0.0)  # (no inf·0 = NaN)
    if x.dtype != torch.float64:
        r = t.to(x.dtype)
        t = torch.where(r.double() < t, torch.nextafter(r, torch.full_like(r, math.inf)), r)
    return torch.where(n > 0, t, NEG_INF)


def _top_n_sigma_(x: Tensor, top_n_sigma) -> Tensor:
    return x.masked_fill_(x < threshold(x, top_n_sigma), NEG_INF)


def top_n_sigma(logits: Tensor, *, top_n_sigma=0.0) -> Tensor:
    """Mask logits more than ``top_n_sigma`` standard deviations below the row's maximum."""
    check_logits(logits)
    top_n_sigma = knob("top_n_sigma", top_n_sigma, logits)
    x = logits.clone()
    return x if is_neutral("top_n_sigma", top_n_sigma) else _top_n_sigma_(x, top_n_sigma)


STAGE = Stage(
    "top_n_sigma", apply=lambda x, batch: _top_n_sigma_(x, batch.knob("top_n_sigma")),
    compact=lambda x, batch: _candidates().at_least(x, threshold(x, batch.knob("top_n_sigma"))),
    aliases=("nsigma", "top_nsigma"), paper="Tang et al. 2024, arXiv 2411.07641",
    summary="keep logits within n standard deviations of the max (temperature-invariant)",
    active=lambda p: p.top_n_sigma > 0,
    knobs=(Knob("top_n_sigma", 0.0, math.isfinite, "finite reals (<= 0 = off)",
                "keep logits >= max - n·sigma", flag="--top-nsigma"),))


def _candidates():
    from ..candidates import Candidates  # candidates imports ops: keep the import edge one-way

    return Candidates

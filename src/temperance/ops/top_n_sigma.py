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
from ._common import NEG_INF, check_logits, col, is_neutral, knob


def _moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and population variance over the finite entries of each row, in x's dtype.

    Blocks of rows small enough that the temporaries stay in cache (a fresh [B, V] temporary per
    op costs more than the arithmetic); a block with no masked entry (raw logits: the usual case)
    skips the mask, with the same arithmetic and so the same bits."""
    B, V = x.shape
    step = max(1, (1 << 18) // max(V, 1))
    if B > step:
        parts = [_moments(x[i:i + step]) for i in range(0, B, step)]
        return torch.cat([m for m, _ in parts]), torch.cat([v for _, v in parts])
    if bool((x.amin(-1) > NEG_INF).all()):
        mean = x.sum(-1, keepdim=True) / V
        return mean, ((x - mean) ** 2).sum(-1, keepdim=True) / V
    finite = torch.isfinite(x)
    count = finite.sum(-1, keepdim=True).to(x.dtype)
    mean = torch.where(finite, x, 0.0).sum(-1, keepdim=True) / count
    return mean, (torch.where(finite, x - mean, 0.0) ** 2).sum(-1, keepdim=True) / count


def threshold(x: Tensor, top_n_sigma) -> Tensor:
    """The smallest logit top-nσ keeps, ``[B, 1]`` (``-inf`` for rows with n <= 0).

    Rows whose moments overflow the dtype (logits near its range), or where n·σ is ∞·0, are
    redone in float64 (σ = 0: every finite logit equals the max, all are kept)."""
    n = col(top_n_sigma, x)
    mean, var = _moments(x)
    t = x.amax(-1, keepdim=True) - n * var.sqrt()
    bad = (~torch.isfinite(mean) | ~torch.isfinite(var) | torch.isnan(t)) & (n > 0)
    if bool(bad.any()):
        r = bad.view(-1).nonzero().view(-1)
        sd = _moments(x[r].double())[1].sqrt()
        spread = torch.where(sd > 0, col(top_n_sigma, x, torch.float64)[r] * sd, 0.0)
        t[r] = (x[r].amax(-1, keepdim=True).double() - spread).to(x.dtype)
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

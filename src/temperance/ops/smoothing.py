"""Quadratic / cubic "smoothing" sampling (kalomaze; text-generation-webui, KoboldCpp).

With Δ = l − l_max ≤ 0, factor f = ``smoothing_factor`` (0 = off, neutral) and curve
c = ``smoothing_curve`` in [1, 3] (1 = pure quadratic)::

    l' = l_max − k·f·Δ² + s·f·Δ³,   k = (3 − c)/2,  s = (c − 1)/2

The top token is unchanged; gaps smaller than 1/f shrink (near-top tokens come closer), larger gaps
grow (the tail is suppressed). Masked (−inf) entries stay masked. Computed in float64; a far-tail
logit pushed below the dtype's range saturates at its most negative finite value (a logit, not a
mask). In a chain, greedy rows (T < 1e-5) are not smoothed.

>>> import torch
>>> smoothing(torch.tensor([[2.0, 1.0, 0.0]]), smoothing_factor=0.5)
tensor([[2.0000, 1.5000, 0.0000]])
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..stage import Knob, Stage
from ._common import LIMIT, check_logits, col, fit, is_neutral, knob


def _smoothing_(x: Tensor, smoothing_factor, smoothing_curve) -> Tensor:
    f, c = col(smoothing_factor, x, torch.float64), col(smoothing_curve, x, torch.float64)
    x64 = x.double()
    m = x64.amax(-1, keepdim=True)
    d = x64 - m
    y = fit(m - (3 - c) / 2 * f * d * d + (c - 1) / 2 * f * d * d * d, x.dtype)
    return x.copy_(torch.where(torch.isfinite(x) & (f > 0), y, x))


def smoothing(logits: Tensor, *, smoothing_factor=0.0, smoothing_curve=1.0) -> Tensor:
    """Apply the quadratic/cubic transform around each row's maximum."""
    check_logits(logits)
    smoothing_factor = knob("smoothing_factor", smoothing_factor, logits)
    smoothing_curve = knob("smoothing_curve", smoothing_curve, logits)
    x = logits.clone()
    return x if is_neutral("smoothing_factor", smoothing_factor) else _smoothing_(x, smoothing_factor, smoothing_curve)


STAGE = Stage(
    "smoothing", apply=None, in_order=False, part_of="temperature",
    paper="kalomaze, text-generation-webui #5403", summary="quadratic/cubic transform around the max",
    active=lambda p: p.smoothing_factor > 0,
    knobs=(
        Knob("smoothing_factor", 0.0, lambda x: 0 <= x <= LIMIT, "[0, 1e30] (0 = off)",
             "quadratic smoothing strength", flag="--smoothing-factor"),
        Knob("smoothing_curve", 1.0, lambda x: 1 <= x <= 3, "[1, 3]",
             "1 = quadratic; above 1 adds a cubic term", flag="--smoothing-curve"),
    ))

"""Temperature: divide the logits by T.

``temperature`` (neutral 1.0): T < 1 sharpens, T > 1 flattens; there is no upper cap (T = 100 is
valid and, with min-p before it, stays coherent). T == 0 means greedy: the logits are left alone and
`temperance.pick` takes the argmax of the row (ties → lowest token id). T < 0 is an error.

>>> import torch
>>> temperature(torch.tensor([[2.0, 1.0, 0.0]]), temperature=0.5)
tensor([[4., 2., 0.]])
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..stage import Knob, Stage
from ._common import check_logits, col, is_neutral, knob


MIN_T = 1e-6  # below this a (dynamic) temperature counts as 0: greedy
FMAX = torch.finfo(torch.float32).max


def _temperature_(x: Tensor, temperature) -> Tensor:
    if not isinstance(temperature, Tensor):
        if temperature <= 0:
            return x
        x.div_(temperature)
        sharpen = temperature < 1
    else:
        T = col(temperature, x)
        x.div_(T.masked_fill(T <= 0, 1.0))  # greedy rows (T == 0) untouched
        sharpen = bool((T < 1).any())
    # A tiny T can push large logits past float32's range: keep them finite (and -inf masked).
    return torch.nan_to_num_(x, nan=0.0, posinf=FMAX, neginf=float("-inf")) if sharpen else x


def temperature(logits: Tensor, *, temperature=1.0) -> Tensor:
    """Return ``logits / temperature`` per row; rows with temperature 0 are returned unchanged."""
    check_logits(logits)
    temperature = knob("temperature", temperature, logits)
    x = logits.clone()
    return x if is_neutral("temperature", temperature) else _temperature_(x, temperature)


def _stage_(x: Tensor, batch) -> Tensor:
    """The chain's temperature stage: dynamic temperature or plain T, then smoothing (never on
    greedy rows)."""
    from .dynatemp import _dynatemp_  # they build on _temperature_: imported here, not at the top
    from .smoothing import _smoothing_

    k = batch.knob
    if batch.active("dynatemp"):
        x = _dynatemp_(x, k("temperature"), k("dynatemp_range"), k("dynatemp_exponent"))
    else:
        T = {p.temperature for p in batch.params}
        x = _temperature_(x, T.pop() if len(T) == 1 else k("temperature"))
    if batch.active("smoothing"):
        x = _smoothing_(x, torch.where(k("temperature") > 0, k("smoothing_factor"), 0.0),
                        k("smoothing_curve"))
    return x


STAGE = Stage(
    "temperature", apply=_stage_, aliases=("temp",), paper="Ackley et al. 1985; Hinton et al. 2015",
    summary="l / T (0 = greedy, no cap), with dynamic temperature and smoothing",
    active=lambda p: p.temperature not in (0.0, 1.0) or (
        p.temperature > 0 and (p.dynatemp_range > 0 or p.smoothing_factor > 0)),
    knobs=(Knob("temperature", 1.0, lambda x: math.isfinite(x) and x >= 0, "[0, inf) (0 = greedy)",
                "divide the logits by T; 0 = greedy; no upper cap", flag="--temp",
                request=("temperature", "temp")),))

"""Temperature: divide the logits by T.

``temperature`` (neutral 1.0): T < 1 sharpens, T > 1 flattens; there is no practical upper cap
(T = 100 is valid and, with min-p before it, stays coherent; the knob's range ends at 1e30, where
every float32 logit is already ~0). T < 0 is an error.

**Greedy.** T == 0 is greedy, and greedy is a *distribution*: a point mass on the first maximum of
the row (every other token is removed, ties → lowest token id). So what `Chain.stages`, ``inspect``
and the logprobs show is what is sampled, and the chosen token's logprob is 0. A positive T below
``GREEDY_BELOW`` = 1e-5 (vLLM's floor) is greedy too: dividing by it can only overflow, and its
limit T → 0 is the greedy choice.

**No overflow.** Sharpening can push a logit past the dtype's range (l = 3e38, T = 0.5). Such a row
is shifted by its maximum first, ``(l − max) / T`` in float64 — the same distribution — and what
still lies below the range saturates at the most negative finite value. (In the other rows a
far-tail logit whose probability is exactly 0 anyway may round to ``-inf``.)

==================  =======  ==========================
logits              T        result
==================  =======  ==========================
[2, 1, 0]           0.5      [4, 2, 0]
[2, 1, 0]           0        [2, -inf, -inf]
[1, 3, 3, 0]        0        [-inf, 3, -inf, -inf]
[5, 9]              1e-38    [-inf, 9]  (below 1e-5)
[-3e38, -3.2e38]    0.5      [0, -4e37]  (shifted)
==================  =======  ==========================

>>> import torch
>>> temperature(torch.tensor([[2.0, 1.0, 0.0]]), temperature=0.5)
tensor([[4., 2., 0.]])
>>> temperature(torch.tensor([[1.0, 3.0, 3.0, 0.0]]), temperature=0)
tensor([[-inf, 3., -inf, -inf]])
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..stage import Knob, Stage
from ._common import LIMIT, NEG_INF, check_logits, col, fit, is_neutral, knob

GREEDY_BELOW = 1e-5  # a temperature below this is greedy (T == 0)
_FLOOR32 = float(torch.tensor(GREEDY_BELOW, dtype=torch.float32))


def is_greedy(temperature):
    """``temperature < 1e-5`` (a bool for a float, a bool tensor for a tensor), decided on the
    float32 value, as a batch's per-row knob holds it: the stage and the draw always agree."""
    if isinstance(temperature, Tensor):
        return temperature.float() < _FLOOR32
    return float(torch.tensor(float(temperature), dtype=torch.float64).float()) < _FLOOR32


def point_mass_(x: Tensor, rows: Tensor | None = None) -> Tensor:
    """Keep only the first maximum of each row (of the rows where ``rows`` ``[B, 1]`` is True)."""
    if rows is not None:
        idx = rows.view(-1).nonzero().view(-1)
        if idx.numel():
            x[idx] = point_mass_(x[idx])
        return x
    top = x.argmax(-1, keepdim=True)  # the first maximum
    val = x.gather(1, top)
    return x.fill_(NEG_INF).scatter_(1, top, val)


def _divide_(x: Tensor, T: Tensor) -> Tensor:
    """``x / T`` per row (``T`` ``[B, 1]`` float64, >= GREEDY_BELOW), without overflow."""
    fmax = torch.finfo(x.dtype).max
    over = None
    if bool((T < 1).any()):
        hi = x.amax(-1, keepdim=True).double()
        over = ((hi.abs() / T > fmax) & torch.isfinite(hi)).view(-1)  # (an empty row stays as is)
        if bool(over.any()):
            idx = over.nonzero().view(-1)
            shifted = fit((x[idx].double() - hi[idx]) / T[idx], x.dtype)
    x.div_(T if x.dtype == torch.float64 else T.float())
    if over is not None and bool(over.any()):
        x[idx] = shifted
    return x


def _temperature_(x: Tensor, temperature) -> Tensor:
    if not isinstance(temperature, Tensor):
        if is_greedy(temperature):
            return point_mass_(x)
        if temperature == 1:
            return x
        return _divide_(x, torch.full((x.shape[0], 1), float(temperature), dtype=torch.float64,
                                      device=x.device))
    T = col(temperature, x, torch.float64)
    greedy = is_greedy(T)
    x = _divide_(x, torch.where(greedy, 1.0, T))
    return point_mass_(x, greedy) if bool(greedy.any()) else x


def temperature(logits: Tensor, *, temperature=1.0) -> Tensor:
    """Return ``logits / temperature`` per row; greedy rows (T < 1e-5) keep only their first maximum."""
    check_logits(logits)
    temperature = knob("temperature", temperature, logits)
    x = logits.clone()
    return x if is_neutral("temperature", temperature) else _temperature_(x, temperature)


def _greedy_compact(x: Tensor, batch) -> "Candidates":  # noqa: F821
    """The chain's compaction when every row is greedy: the point mass as one candidate per row."""
    from ..candidates import Candidates

    top = x.argmax(-1, keepdim=True)
    return Candidates(x.gather(1, top).float(), top, x.shape[1])


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
        x = _smoothing_(x, torch.where(is_greedy(k("temperature")), 0.0, k("smoothing_factor")),
                        k("smoothing_curve"))
    return x


STAGE = Stage(
    "temperature", apply=_stage_, aliases=("temp",), paper="Ackley et al. 1985; Hinton et al. 2015",
    summary="l / T (0 = greedy: a point mass on the first maximum), with dynamic temperature and smoothing",
    active=lambda p: p.temperature != 1.0 or p.dynatemp_range > 0 or p.smoothing_factor > 0,
    compact=_greedy_compact,
    knobs=(Knob("temperature", 1.0, lambda x: 0 <= x <= LIMIT, "[0, 1e30] (0 = greedy; below 1e-5 too)",
                "divide the logits by T; 0 = greedy; no practical upper cap", flag="--temp",
                request=("temperature", "temp")),))

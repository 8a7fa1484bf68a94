"""Dynamic (entropy-based) temperature, llama.cpp's ``temp_ext``.

The temperature follows the entropy of the current distribution: a confident step (low entropy)
gets a low temperature, an uncertain one a high temperature::

    T_dyn = T_min + (T_max − T_min) · (H / ln N) ^ dynatemp_exponent
    T_min = max(0, T − dynatemp_range),  T_max = T + dynatemp_range

with H the entropy (nats) over the N finite candidates. ``dynatemp_range`` 0 (neutral) is plain
temperature. A row with one candidate is left alone; a row whose T_dyn is 0 keeps only its top token.
Greedy rows (T == 0) are left alone. (kalomaze, llama.cpp PR #4972.)

>>> import torch
>>> x = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
>>> y = dynatemp(x, temperature=1.0, dynatemp_range=0.5)
>>> round(float(x[0, 0] / y[0, 0]), 4)   # the temperature that was applied
1.1835
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..stage import Knob, Stage
from ._common import NEG_INF, check_logits, col, knob
from .temperature import MIN_T, _temperature_


def _dynatemp_(x: Tensor, temperature, dynatemp_range, dynatemp_exponent) -> Tensor:
    T, R, E = col(temperature, x), col(dynatemp_range, x), col(dynatemp_exponent, x)
    logp = torch.log_softmax(x, dim=-1)
    p = logp.exp()
    H = -torch.where(p > 0, p * logp, 0.0).sum(-1, keepdim=True)
    n = torch.isfinite(x).sum(-1, keepdim=True)
    h_max = torch.log(n.clamp(min=2).to(x.dtype))
    lo, hi = (T - R).clamp(min=0), T + R
    t_dyn = lo + (hi - lo) * (H / h_max).clamp(0, 1).pow(E)
    t_dyn = torch.where((R > 0) & (n > 1) & (T > 0), t_dyn, T)  # greedy rows (T == 0) untouched
    frozen = (t_dyn < MIN_T) & (T > 0)  # T_dyn ~ 0 (no entropy at T_min = 0): keep only the top token
    if bool(frozen.any()):
        top = x.argmax(-1, keepdim=True)
        others = torch.ones_like(x, dtype=torch.bool).scatter_(1, top, False)
        x.masked_fill_(others & frozen, NEG_INF)
    return _temperature_(x, torch.where(frozen, 1.0, t_dyn).view(-1))


def dynatemp(logits: Tensor, *, temperature=1.0, dynatemp_range=0.0, dynatemp_exponent=1.0) -> Tensor:
    """Apply entropy-scaled temperature per row (plain temperature where the range is 0)."""
    check_logits(logits)
    temperature = knob("temperature", temperature, logits)
    dynatemp_range = knob("dynatemp_range", dynatemp_range, logits)
    dynatemp_exponent = knob("dynatemp_exponent", dynatemp_exponent, logits)
    return _dynatemp_(logits.clone(), temperature, dynatemp_range, dynatemp_exponent)


STAGE = Stage(
    "dynatemp", apply=None, in_order=False, part_of="temperature",
    paper="kalomaze, llama.cpp #4972", summary="entropy-scaled temperature in [T - range, T + range]",
    active=lambda p: p.dynatemp_range > 0,
    knobs=(
        Knob("dynatemp_range", 0.0, lambda x: math.isfinite(x) and x >= 0, "[0, inf) (0 = off)",
             "T varies in [T - range, T + range] with the entropy", flag="--dynatemp-range"),
        Knob("dynatemp_exponent", 1.0, lambda x: math.isfinite(x) and x >= 0, "[0, inf)",
             "how T grows with the normalised entropy", flag="--dynatemp-exp",
             request=("dynatemp_exponent", "dynatemp_exp")),
    ))

"""Dynamic (entropy-based) temperature, llama.cpp's ``temp_ext``.

The temperature follows the entropy of the current distribution: a confident step (low entropy)
gets a low temperature, an uncertain one a high temperature::

    T_dyn = T_min + (T_max − T_min) · (H / ln N) ^ dynatemp_exponent
    T_min = max(0, T − dynatemp_range),  T_max = T + dynatemp_range

with H the entropy (nats) over the N finite candidates. ``dynatemp_range`` 0 (neutral) is plain
temperature. A row with one candidate is left alone. A row whose T_dyn falls below the greedy floor
(1e-5, see `temperance.ops.temperature`) is greedy: a point mass on its first maximum. Greedy rows
(T < 1e-5) stay greedy whatever the range: dynatemp never raises their temperature. T_dyn is
computed in float64 and applied without overflow. (kalomaze, llama.cpp PR #4972.)

>>> import torch
>>> x = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
>>> y = dynatemp(x, temperature=1.0, dynatemp_range=0.5)
>>> round(float(x[0, 0] / y[0, 0]), 4)   # the temperature that was applied
1.1835
"""

from __future__ import annotations


import torch
from torch import Tensor

from ..stage import Knob, Stage
from ._common import LIMIT, check_logits, col, knob
from .temperature import _temperature_, is_greedy


def _dynatemp_(x: Tensor, temperature, dynatemp_range, dynatemp_exponent) -> Tensor:
    f64 = torch.float64
    T, R, E = col(temperature, x, f64), col(dynatemp_range, x, f64), col(dynatemp_exponent, x, f64)
    logp = torch.log_softmax(x, dim=-1, dtype=torch.float32)
    p = logp.exp()
    H = -torch.where(p > 0, p * logp, 0.0).sum(-1, keepdim=True).double()
    n = torch.isfinite(x).sum(-1, keepdim=True)
    h_max = torch.log(n.clamp(min=2).to(f64))
    lo, hi = (T - R).clamp(min=0), T + R
    t_dyn = lo + (hi - lo) * (H / h_max).clamp(0, 1).pow(E)
    t_dyn = torch.where((R > 0) & (n > 1) & ~is_greedy(T), t_dyn, T)  # greedy rows stay greedy
    return _temperature_(x, t_dyn.view(-1))  # T_dyn below the floor: a point mass


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
        Knob("dynatemp_range", 0.0, lambda x: 0 <= x <= LIMIT, "[0, 1e30] (0 = off)",
             "T varies in [T - range, T + range] with the entropy", flag="--dynatemp-range"),
        Knob("dynatemp_exponent", 1.0, lambda x: 0 <= x <= LIMIT, "[0, 1e30]",
             "how T grows with the normalised entropy", flag="--dynatemp-exp",
             request=("dynatemp_exponent", "dynatemp_exp")),
    ))

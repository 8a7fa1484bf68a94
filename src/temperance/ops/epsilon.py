"""Epsilon sampling: keep tokens with probability at least ε.

``epsilon_cutoff`` ε (neutral 0 = off), in [0, 1); the most likely token is always kept. Typical
values 3e-4 … 9e-4 for open-ended text, 0.02 for MBR candidates. (Hewitt, Manning, Liang 2022,
"Truncation Sampling as Language Model Desmoothing".)

>>> import torch
>>> p = torch.tensor([[0.5, 0.3, 0.15, 0.04, 0.01]])
>>> (epsilon(p.log(), epsilon_cutoff=0.02) > float("-inf")).tolist()
[[True, True, True, True, False]]
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..stage import Knob, Stage
from ._common import NEG_INF, check_logits, col, is_neutral, knob


def cutoff_(x: Tensor, p: Tensor, floor: Tensor) -> Tensor:
    """Mask ``p < floor`` except each row's most likely token (shared with eta)."""
    return x.masked_fill_((p < floor) & (p < p.amax(-1, keepdim=True)), NEG_INF)


def _epsilon_(x: Tensor, epsilon_cutoff) -> Tensor:
    return cutoff_(x, torch.softmax(x, dim=-1), col(epsilon_cutoff, x))


def epsilon(logits: Tensor, *, epsilon_cutoff=0.0) -> Tensor:
    """Mask tokens with probability below ``epsilon_cutoff``."""
    check_logits(logits)
    epsilon_cutoff = knob("epsilon_cutoff", epsilon_cutoff, logits)
    x = logits.clone()
    return x if is_neutral("epsilon_cutoff", epsilon_cutoff) else _epsilon_(x, epsilon_cutoff)


STAGE = Stage(
    "epsilon", apply=lambda x, batch: _epsilon_(x, batch.knob("epsilon_cutoff")),
    aliases=("epsilon_cutoff",), paper="Hewitt et al. 2022, Truncation Sampling as Language Model Desmoothing",
    summary="keep p >= epsilon", active=lambda p: p.epsilon_cutoff > 0,
    knobs=(Knob("epsilon_cutoff", 0.0, lambda x: 0 <= x < 1, "[0, 1) (0 = off)",
                "keep tokens with p >= epsilon", flag="--epsilon-cutoff"),))

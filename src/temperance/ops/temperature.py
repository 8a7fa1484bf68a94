"""Temperature: divide the logits by T.

``temperature`` (neutral 1.0): T < 1 sharpens, T > 1 flattens; there is no upper cap (T = 100 is
valid and, with min-p before it, stays coherent). T == 0 means greedy: the logits are left alone and
`temperance.pick` takes the argmax of the row (ties → lowest token id). T < 0 is an error.

>>> import torch
>>> temperature(torch.tensor([[2.0, 1.0, 0.0]]), temperature=0.5)
tensor([[4., 2., 0.]])
"""

from __future__ import annotations

import torch
from torch import Tensor

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

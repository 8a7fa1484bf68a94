"""Temperature: divide the logits by T.

``temperature`` (neutral 1.0): T < 1 sharpens, T > 1 flattens; there is no upper cap (T = 100 is
valid and, with min-p before it, stays coherent). T == 0 means greedy: the logits are left alone and
`temperance.pick` takes the argmax of the row (ties → lowest token id). T < 0 is an error.

>>> import torch
>>> temperature(torch.tensor([[2.0, 1.0, 0.0]]), temperature=0.5)
tensor([[4., 2., 0.]])
"""

from __future__ import annotations

from torch import Tensor

from ._common import check_logits, col, is_neutral, knob


def _temperature_(x: Tensor, temperature) -> Tensor:
    if not isinstance(temperature, Tensor):
        return x.div_(temperature) if temperature > 0 else x
    T = col(temperature, x)
    return x.div_(T.masked_fill(T <= 0, 1.0))  # greedy rows (T == 0) untouched


def temperature(logits: Tensor, *, temperature=1.0) -> Tensor:
    """Return ``logits / temperature`` per row; rows with temperature 0 are returned unchanged."""
    check_logits(logits)
    temperature = knob("temperature", temperature, logits)
    x = logits.clone()
    return x if is_neutral("temperature", temperature) else _temperature_(x, temperature)

"""Logit bias: add a per-token constant; ``-inf`` bans the token.

``logit_bias`` (neutral ``{}``) maps token id → bias, one mapping for every row or a list of
mappings (one per row). As OpenAI's ``logit_bias``; a positive bias can raise a logit.

>>> import torch
>>> logit_bias(torch.zeros(1, 4), logit_bias={1: 2.5, 3: float("-inf")})
tensor([[0.0000, 2.5000, 0.0000,   -inf]])
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import Tensor

from ..errors import TemperanceError
from ..params import _check_bias
from ._common import check_logits


def pack(biases: Sequence[Mapping[int, float]], vocab_size: int, device=None) -> tuple[Tensor, Tensor]:
    """Per-row bias mappings → ``ids [B, M]``, ``values [B, M]`` (padding: id 0, value 0)."""
    M = max((len(b) for b in biases), default=0)
    ids = torch.zeros(len(biases), M, dtype=torch.int64)
    vals = torch.zeros(len(biases), M, dtype=torch.float32)
    for i, b in enumerate(biases):
        for j, (tok, v) in enumerate(b.items()):
            if tok >= vocab_size:
                raise TemperanceError(
                    f"logit_bias token id {tok} is out of range for a vocabulary of {vocab_size}")
            ids[i, j], vals[i, j] = tok, v
    return ids.to(device), vals.to(device)


def _logit_bias_(x: Tensor, ids: Tensor, values: Tensor) -> Tensor:
    if ids.numel():
        # accumulate=True: padding entries (id 0, +0.0) may repeat a real id and must add, not overwrite
        rows = torch.arange(x.shape[0], device=x.device).view(-1, 1).expand_as(ids)
        x.index_put_((rows, ids), values.to(x.dtype), accumulate=True)
    return x


def logit_bias(logits: Tensor, *, logit_bias) -> Tensor:
    """Add ``logit_bias`` (a mapping, or one mapping per row) to the logits."""
    check_logits(logits)
    B, V = logits.shape
    biases = [logit_bias] * B if isinstance(logit_bias, Mapping) else list(logit_bias)
    if len(biases) != B:
        raise TemperanceError(f"logit_bias must be one mapping or {B} (one per row), got {len(biases)}")
    ids, vals = pack([_check_bias(b) for b in biases], V, logits.device)
    return _logit_bias_(logits.clone(), ids, vals)

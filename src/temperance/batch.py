"""Batch: everything a sampler may read besides the logits.

Per-row knobs as ``[B]`` tensors (stacked from each row's `SamplingParams`), the token history
(``[B, L]`` int64, right-aligned, -1 padded), each row's seed and step, and host-side flags saying
which samplers any row uses (so the chain skips the rest without touching the tensor).

One verb changes the rows: ``select(index)`` — shrink (finished rows), reorder (beams) or repeat
(n samples per prompt) — and ``append(tokens)`` moves every row one step forward. Both return a new
Batch; the loop owns the batch and is its only writer.

>>> from temperance import SamplingParams
>>> b = Batch([SamplingParams(top_k=40, seed=1), SamplingParams(seed=2)], history=[[5, 6], [7]])
>>> b.knob("top_k").tolist(), b.active("top_k"), b.active("top_p")
([40, 0], True, False)
>>> b.select(torch.tensor([1, 1, 0])).seed.tolist()
[2, 2, 1]
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .errors import TemperanceError
from .ops.logit_bias import pack as pack_bias
from .ops._common import as_history
from .ops.dry import Breakers
from .params import ACTIVE, KNOBS, SamplingParams


class Batch:
    def __init__(self, params: SamplingParams | Sequence[SamplingParams], *, history=None,
                 size: int | None = None, step: int | Tensor = 0, seed: Tensor | None = None,
                 dry_breakers: Sequence[Breakers] | None = None, device: str | torch.device = "cpu"):
        if isinstance(params, SamplingParams):
            params = [params] * (size or (len(history) if history is not None else 1))
        self.params: tuple[SamplingParams, ...] = tuple(params)
        B = len(self.params)
        if B == 0:
            raise TemperanceError("a batch needs at least one row")
        self.device = torch.device(device)
        self.history = (as_history(history, B, self.device) if history is not None
                        else torch.empty(B, 0, dtype=torch.int64, device=self.device))
        if seed is None:  # drawn from torch's global RNG, so torch.manual_seed makes it repeatable
            drawn = torch.randint(0, 2**62, (B,), dtype=torch.int64)
            seed = torch.tensor([p.seed if p.seed is not None else int(d)
                                 for p, d in zip(self.params, drawn)], dtype=torch.int64)
        self.seed = seed.to(self.device)
        self.step = (step if isinstance(step, Tensor) else torch.full((B,), step, dtype=torch.int64)
                     ).to(self.device)
        self.dry_breakers = list(dry_breakers) if dry_breakers is not None else None
        self._active = {name: any(f(p) for p in self.params) for name, f in ACTIVE.items()}
        self._knobs: dict[str, Tensor] = {}
        self._bias: tuple[int, Tensor, Tensor] | None = None  # (vocab size, ids, values), packed once
        self._bans = [float("-inf") in p.logit_bias.values() for p in self.params]  # per row
        if self._active["dry"] and self.dry_breakers is None:
            if any(p.dry_sequence_breakers for p in self.params if p.active("dry")):
                raise TemperanceError(
                    "DRY is on but its sequence breakers are strings: give the batch "
                    "dry_breakers= as token-id sequences (generation expands them through the "
                    "tokenizer), or set dry_sequence_breakers=[]")
            self.dry_breakers = [[] for _ in self.params]

    def __len__(self) -> int:
        return len(self.params)

    def active(self, name: str) -> bool:
        """Does any row use sampler ``name``? (host-side, no device sync)"""
        return self._active[name]

    def all_active(self, name: str) -> bool:
        return all(ACTIVE[name](p) for p in self.params)

    def knob(self, name: str) -> Tensor:
        """Knob ``name`` for every row, ``[B]`` (float32, or int64 for integer knobs)."""
        if name not in self._knobs:
            dtype = torch.int64 if KNOBS[name].integer else torch.float32
            self._knobs[name] = torch.tensor([getattr(p, name) for p in self.params],
                                             dtype=dtype, device=self.device)
        return self._knobs[name]

    @property
    def bias_bans(self) -> bool:
        """Does any row's logit_bias ban a token (-inf)? (host-side)"""
        return any(self._bans)

    def logit_bias(self, vocab_size: int) -> tuple[Tensor, Tensor]:
        """Every row's bias as ``ids [B, M]``, ``values [B, M]``, packed once per batch (``select``
        and ``append`` carry the packed tensors along, indexed by row)."""
        if self._bias is None or self._bias[0] != vocab_size:
            self._bias = (vocab_size, *pack_bias([p.logit_bias for p in self.params], vocab_size, self.device))
        return self._bias[1], self._bias[2]

    def select(self, index: Tensor | Sequence[int]) -> Batch:
        """The rows ``index`` (shrink, reorder or repeat), as a new Batch."""
        index = torch.as_tensor(index, dtype=torch.int64, device=self.device)
        rows = index.tolist()
        new = Batch.__new__(Batch)
        new.params = tuple(self.params[i] for i in rows)
        new.device, new.history = self.device, self.history[index]
        new.seed, new.step = self.seed[index], self.step[index]
        new.dry_breakers = [self.dry_breakers[i] for i in rows] if self.dry_breakers is not None else None
        new._active = {name: any(f(p) for p in new.params) for name, f in ACTIVE.items()}
        new._knobs = {k: v[index] for k, v in self._knobs.items()}
        new._bias = None if self._bias is None else (self._bias[0], self._bias[1][index], self._bias[2][index])
        new._bans = [self._bans[i] for i in rows]
        return new

    def append(self, tokens: Tensor) -> Batch:
        """Every row one step on: ``tokens`` ``[B]`` join the history, the step counter moves."""
        new = self.select(torch.arange(len(self), device=self.device))
        new.history = torch.cat([self.history, tokens.view(-1, 1).to(self.history)], dim=1)
        new.step = self.step + 1
        return new

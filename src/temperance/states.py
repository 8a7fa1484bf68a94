"""Per-row state of stateful samplers, behind the loop's three verbs.

Everything stateful follows the batch with the same verbs the engine applies to the runtime, the
`Batch` and its row objects:

- ``select(index)``: rows dropped, reordered or repeated (``index`` [B'] into the current rows);
- ``accept(picked, batch)``: learn which token each row chose;
- ``rollback(rows, batch)``: rows that rewound (phrase bans) forget what they learned.

Mirostat's ``mu`` is the one such state among the samplers: it starts at ``2 · tau`` and moves by
``eta`` times the chosen token's surprise error after every token (Basu et al., 2021). A rewound
row's ``mu`` restarts at ``2 · tau`` (its history of surprises is not kept).

>>> import torch
>>> from temperance import Batch, SamplingParams
>>> b = Batch(SamplingParams(mirostat=2, mirostat_tau=3.0), size=2)
>>> s = MirostatState(b)
>>> s.mu.tolist()
[6.0, 6.0]
>>> s.select(torch.tensor([1])).mu.tolist()
[6.0]
"""

from __future__ import annotations

import torch
from torch import Tensor

from .batch import Batch
from .ops.mirostat import mirostat_update

__all__ = ["MirostatState"]


class MirostatState:
    """Mirostat's per-row control value ``mu`` [B] (float32, on the batch's device)."""

    def __init__(self, batch: Batch, mu: Tensor | None = None):
        self.mu = 2 * batch.knob("mirostat_tau") if mu is None else mu

    def __len__(self) -> int:
        return self.mu.shape[0]

    def select(self, index: Tensor) -> MirostatState:
        """Follow the batch's rows (in place; returns self)."""
        self.mu = self.mu[torch.as_tensor(index, dtype=torch.int64, device=self.mu.device)]
        return self

    def accept(self, picked, batch: Batch) -> None:
        """Move ``mu`` by the surprise of each row's chosen token (rows with mirostat off keep it)."""
        if batch.active("mirostat"):
            new = mirostat_update(self.mu, picked.logprob, mirostat_tau=batch.knob("mirostat_tau"),
                                  mirostat_eta=batch.knob("mirostat_eta"))
            self.mu = torch.where(batch.knob("mirostat") > 0, new, self.mu)

    def rollback(self, rows: Tensor, batch: Batch) -> None:
        """Rows ``rows`` start over at ``2 · tau``."""
        rows = torch.as_tensor(rows, dtype=torch.int64, device=self.mu.device)
        self.mu = self.mu.clone()
        self.mu[rows] = 2 * batch.knob("mirostat_tau")[rows]

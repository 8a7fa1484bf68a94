"""Candidates: the survivors of truncation, compacted to ``[B, K]`` with their token ids.

Dense ``[B, V]`` logits with ``-inf`` for removed tokens are the contract; but once a truncation
sampler has run, almost every entry is ``-inf``. Every sampler after the first truncation only
looks at the finite entries and their order, so the chain may continue on the survivors alone:
``logits [B, K]`` and ``ids [B, K]``. Ids are ascending within a row, so position order equals
token-id order and every tie rule ("lower token id first") holds unchanged. Padding entries have
logit ``-inf`` and id ``vocab_size``.

>>> import torch
>>> inf = float("inf")
>>> c = Candidates.from_dense(torch.tensor([[0.0, -inf, 1.0, -inf, -inf]]))
>>> c.logits, c.ids
(tensor([[0., 1.]]), tensor([[0, 2]]))
>>> c.dense()
tensor([[0., -inf, 1., -inf, -inf]])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .ops._common import compact
from .ops._topk import CHUNK


@dataclass
class Candidates:
    logits: Tensor  # [B, K] float32, -inf = removed or padding
    ids: Tensor     # [B, K] int64, ascending per row; padding = vocab_size
    vocab_size: int

    @staticmethod
    def whole(x: Tensor) -> Candidates:
        """Every entry of ``x`` ``[B, V]`` (``-inf`` = removed), ids = one ``arange(V)`` shared by
        all rows: the form for rows where most tokens survive."""
        B, V = x.shape
        return Candidates(x, torch.arange(V, device=x.device).expand(B, V), V)

    @property
    def is_whole(self) -> bool:
        """Are these all V entries in id order (the `whole` form)?"""
        return self.ids.shape[1] == self.vocab_size and self.ids.stride(0) == 0

    @staticmethod
    def from_dense(x: Tensor) -> Candidates:
        """Compact the finite entries of ``x`` ``[B, V]`` (all of V if most are finite)."""
        if bool((x.amin(-1) > float("-inf")).all()):  # one cheap pass: nothing removed at all
            return Candidates.whole(x)
        keep = torch.isfinite(x)
        if int(keep.sum(-1).max()) * 2 > x.shape[1]:
            return Candidates.whole(x)
        return Candidates.where(x, keep)

    @staticmethod
    def where(x: Tensor, keep: Tensor, ids: Tensor | None = None, vocab_size: int | None = None
              ) -> Candidates:
        """The entries of ``x`` ``[B, W]`` where ``keep``, in position order (``ids``: the token id
        of every position, default the position itself). Without ``ids``, when most of some row is
        kept, the result is ``x`` masked densely (ids = all of V, as `from_dense`)."""
        B, W = x.shape
        V = vocab_size or W
        if ids is None and W == V and 2 * int(keep.sum(-1).max()) > W:
            return Candidates.whole(torch.where(keep, x, float("-inf")))
        vals, pos = compact(x, keep)
        out = pos if ids is None else ids.gather(1, pos.clamp(max=W - 1))
        return Candidates(vals, torch.where(pos < W, out, V), V)

    @staticmethod
    def at_least(x: Tensor, t: Tensor, cmax: Tensor | None = None) -> Candidates:
        """Every entry of ``x`` ``[B, V]`` with value ``>= t`` (``[B, 1]``), without a pass over
        all of V beyond one chunked max (``cmax``, from `chunk_max`, if the caller has it): only
        chunks of 128 whose maximum reaches t are gathered. When most of some row survives (a flat
        row), the result is ``x`` masked densely instead (see `where`)."""
        B, V = x.shape
        if V // CHUNK < 8 or not x.is_contiguous():
            return Candidates.where(x, x >= t)
        cmax = chunk_max(x) if cmax is None else cmax
        sel = cmax >= t
        n = int(sel.sum(-1).max())
        chunks = torch.argsort((~sel).to(torch.int8), dim=-1, stable=True)[:, :n]
        idx = (chunks.unsqueeze(-1) * CHUNK + torch.arange(CHUNK, device=x.device)).view(B, -1)
        inside = idx < V
        idx = torch.where(inside, idx, V)
        g = x.gather(1, idx.clamp(max=V - 1))
        keep = inside & (g >= t)
        if 2 * int(keep.sum(-1).max()) > V:  # most of a row survives: stay whole (see `where`)
            return Candidates.whole(torch.where(x >= t, x, float("-inf")))
        return Candidates.where(g, keep, idx, V)

    def into(self, out: Tensor) -> Tensor:
        """Write the candidates densely into ``out`` ``[B, V]`` (``-inf`` everywhere else)."""
        V = self.vocab_size
        if self.is_whole:
            return out.copy_(self.logits)
        # padding (id V) is pointed at the row's first entry with that entry's value: a duplicate
        # write of the same value (a row with no entry at all only writes -inf)
        pad = self.ids >= V
        ids = torch.where(pad, self.ids[:, :1].clamp(max=V - 1), self.ids)
        vals = torch.where(pad, self.logits[:, :1], self.logits).to(out.dtype)
        return out.fill_(float("-inf")).scatter_(1, ids, vals)

    def dense(self) -> Tensor:
        """Back to ``[B, V]`` with ``-inf`` everywhere else."""
        B = self.logits.shape[0]
        return self.into(self.logits.new_empty((B, self.vocab_size)))


def chunk_max(x: Tensor) -> Tensor:
    """The maximum of every chunk of 128 entries of ``x`` ``[B, V]``: ``[B, ceil(V / 128)]`` (one
    cheap pass; its row maximum is the row's)."""
    B, V = x.shape
    C = V // CHUNK
    cmax = x[:, : C * CHUNK].reshape(B, C, CHUNK).amax(-1)
    return torch.cat([cmax, x[:, C * CHUNK:].amax(-1, keepdim=True)], dim=1) if V % CHUNK else cmax

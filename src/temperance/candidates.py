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
    def from_dense(x: Tensor) -> Candidates:
        """Compact the finite entries of ``x`` ``[B, V]`` (all of V if most are finite)."""
        B, V = x.shape
        keep = torch.isfinite(x)
        if int(keep.sum(-1).max()) * 2 > V:
            return Candidates(x, torch.arange(V, device=x.device).expand(B, V), V)
        return Candidates.where(x, keep)

    @staticmethod
    def where(x: Tensor, keep: Tensor, ids: Tensor | None = None, vocab_size: int | None = None
              ) -> Candidates:
        """The entries of ``x`` ``[B, W]`` where ``keep``, in position order (``ids``: the token id
        of every position, default the position itself)."""
        B, W = x.shape
        V = vocab_size or W
        vals, pos = compact(x, keep)
        out = pos if ids is None else ids.gather(1, pos.clamp(max=W - 1))
        return Candidates(vals, torch.where(pos < W, out, V), V)

    @staticmethod
    def at_least(x: Tensor, t: Tensor) -> Candidates:
        """Every entry of ``x`` ``[B, V]`` with value ``>= t`` (``[B, 1]``), without a pass over
        all of V beyond one chunked max: only chunks of 128 whose maximum reaches t are gathered."""
        B, V = x.shape
        C = V // CHUNK
        if C < 8 or not x.is_contiguous():
            return Candidates.where(x, x >= t)
        cmax = x[:, : C * CHUNK].view(B, C, CHUNK).amax(-1)
        if V % CHUNK:
            cmax = torch.cat([cmax, x[:, C * CHUNK:].amax(-1, keepdim=True)], dim=1)
        sel = cmax >= t
        n = int(sel.sum(-1).max())
        chunks = torch.argsort((~sel).to(torch.int8), dim=-1, stable=True)[:, :n]
        idx = (chunks.unsqueeze(-1) * CHUNK + torch.arange(CHUNK, device=x.device)).view(B, -1)
        inside = idx < V
        idx = torch.where(inside, idx, V)
        g = x.gather(1, idx.clamp(max=V - 1))
        return Candidates.where(g, inside & (g >= t), idx, V)

    def dense(self) -> Tensor:
        """Back to ``[B, V]`` with ``-inf`` everywhere else."""
        B = self.logits.shape[0]
        if self.ids.shape[1] == self.vocab_size and self.ids.stride(0) == 0:
            return self.logits.clone()
        out = self.logits.new_full((B, self.vocab_size + 1), float("-inf"))
        out.scatter_(1, self.ids, self.logits)
        return out[:, : self.vocab_size].contiguous()

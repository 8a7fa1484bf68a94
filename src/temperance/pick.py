"""pick: the choice of one token per row, separate from everything that shapes the logits.

Greedy rows (temperature 0) take the argmax (ties → lowest token id). The other rows draw with the
Gumbel-max trick on the survivors only: ``argmax(l_i + G_i)`` is a draw from ``softmax(l)``, needs
no normalisation, no prefix sum and no ``torch.multinomial`` (which forces a host sync on GPUs).
The noise ``G_i`` is a hash of ``(seed, step, token id)`` in float64 (`temperance.noise`), so a
seeded row draws the same token alone or in any batch, and far-tail tokens keep their probability.

Returns the tokens, the chosen token's log-probability under the processed distribution (what was
actually sampled from) and, when the raw logits are given, under the raw one; optionally the top-n
candidates after processing with their log-probabilities.

>>> import torch
>>> x = torch.tensor([[0.0, 2.0, 1.0], [5.0, 5.0, 0.0]])
>>> pick(x, seed=torch.tensor([0, 0]), step=torch.tensor([0, 0]), greedy=torch.tensor([False, True])).tokens[1].item()
0
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from . import noise
from .candidates import Candidates
from .ops._common import check_rows  # (it lives with the ops; chain imports it from here)


@dataclass(frozen=True)
class Picked:
    tokens: Tensor                      # [B] int64
    logprob: Tensor                     # [B] log q(token), q = softmax of the processed logits
    raw_logprob: Tensor | None = None   # [B] log p(token) under the raw logits
    top_ids: Tensor | None = None       # [B, n] the n most likely tokens after processing
    top_logprobs: Tensor | None = None  # [B, n]


def pick(x: Tensor | Candidates, *, seed: Tensor, step: Tensor, greedy: Tensor | bool = False,
         raw_logits: Tensor | None = None, top_n: int = 0) -> Picked:
    """Choose one token per row from processed logits ``[B, V]`` or `Candidates`."""
    if isinstance(x, Candidates):
        c = x
    else:
        check_rows(x)
        c = Candidates.from_dense(x)
    B, device = c.logits.shape[0], c.logits.device
    l = c.logits
    if isinstance(greedy, bool):  # the same for every row: no device check needed
        every = some = greedy
    else:
        greedy = torch.as_tensor(greedy, device=device).expand(B).view(-1, 1)
        every, some = bool(greedy.all()), bool(greedy.any())
    if every:
        score = l
    else:
        seed = torch.as_tensor(seed, dtype=torch.int64, device=device).expand(B)
        step = torch.as_tensor(step, dtype=torch.int64, device=device).expand(B)
        score = noise.gumbel_scores(seed, step, c.ids, l)  # float64 [B, K]
        if some:
            score = torch.where(greedy, l.double(), score)
    pos = score.argmax(-1, keepdim=True)  # first maximum: lowest id, since ids ascend in a row
    tokens = c.ids.gather(1, pos).view(-1)
    lse = torch.logsumexp(l, dim=-1, keepdim=True)
    raw = None
    if raw_logits is not None:
        raw = (raw_logits.gather(1, tokens.view(-1, 1)).view(-1).float()
               - torch.logsumexp(raw_logits.float(), dim=-1))
    top_ids = top_lp = None
    if top_n > 0:
        lp, j = torch.topk(l, min(top_n, l.shape[1]), dim=-1)
        top_ids, top_lp = c.ids.gather(1, j), lp - lse
    return Picked(tokens, (l.gather(1, pos) - lse).view(-1), raw, top_ids, top_lp)

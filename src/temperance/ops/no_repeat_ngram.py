"""No-repeat n-gram: never complete an n-gram that already occurs in the context.

``no_repeat_ngram_size`` n (neutral 0 = off), transformers' semantics over prompt + output: if the
last n−1 tokens equal the first n−1 tokens of an earlier n-gram, that n-gram's last token is banned.

>>> import torch
>>> no_repeat_ngram(torch.zeros(1, 4), history=[[1, 2, 3, 1]], no_repeat_ngram_size=2)
tensor([[0., 0., -inf, 0.]])
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..stage import Knob, Stage
from ._common import NEG_INF, as_history, check_history, check_logits, check_not_empty, col, is_neutral, knob


def _no_repeat_ngram_(x: Tensor, history: Tensor, no_repeat_ngram_size) -> Tensor:
    B, L = history.shape
    sizes = col(no_repeat_ngram_size, history, torch.int64).view(-1)
    for n in sorted(set(sizes.tolist()) - {0}):
        if n > L:
            continue
        rows = sizes == n
        h = history
        P = L - n + 1                              # candidate n-gram starts 0..L-n
        match = h[:, :P] >= 0                      # the n-gram lies inside the row's tokens
        if n > 1:
            match &= (h[:, L - n + 1:L - n + 2] >= 0)  # the row has at least n-1 tokens
        for q in range(n - 1):
            match &= h[:, q:q + P] == h[:, L - n + 1 + q:L - n + 2 + q]
        match &= rows.view(-1, 1)
        banned = h[:, n - 1:n - 1 + P]
        r, c = match.nonzero(as_tuple=True)
        x[r, banned[r, c]] = NEG_INF
    return x


def no_repeat_ngram(logits: Tensor, *, history, no_repeat_ngram_size=0) -> Tensor:
    """Ban every token that would repeat an n-gram of ``history``."""
    check_logits(logits)
    no_repeat_ngram_size = knob("no_repeat_ngram_size", no_repeat_ngram_size, logits)
    x = logits.clone()
    if is_neutral("no_repeat_ngram_size", no_repeat_ngram_size):
        return x
    x = _no_repeat_ngram_(x, check_history(as_history(history, x.shape[0], x.device), x.shape[1]), no_repeat_ngram_size)
    check_not_empty(x, "no_repeat_ngram banned every token")  # (as the chain's stage: an error)
    return x


def _stage_(x: Tensor, batch) -> Tensor:
    x = _no_repeat_ngram_(x, batch.history, batch.knob("no_repeat_ngram_size"))
    check_not_empty(x, "no_repeat_ngram banned every token")
    return x


STAGE = Stage(
    "no_repeat_ngram", apply=_stage_, reads_ids=True, aliases=("no_repeat_ngram_size",),
    paper="Paulus et al. 2017; transformers", summary="never complete an n-gram already in the context",
    active=lambda p: p.no_repeat_ngram_size > 0,
    knobs=(Knob("no_repeat_ngram_size", 0, lambda x: x >= 0, "integers >= 0 (0 = off)",
                "never repeat an n-gram of this size", flag="--no-repeat-ngram-size", integer=True),))

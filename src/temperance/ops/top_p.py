"""Top-p (nucleus): keep the smallest set of most likely tokens whose mass reaches p.

``top_p`` (neutral 1.0 = off), in (0, 1]. Sort descending (stable: ties by token id), keep the
shortest prefix whose cumulative probability reaches p, *including* the token that crosses it.
(Holtzman et al. 2019, "The Curious Case of Neural Text Degeneration".)

No full sort of the vocabulary: the exact cut is searched on a window of the largest logits that
grows until it holds mass p (the nucleus of a real LM is usually tens of tokens). Masses are summed
in float64 against a float64 normaliser, so the cut agrees with a float64 reference.

>>> import torch
>>> p = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
>>> torch.softmax(top_p(p.log(), top_p=0.7), -1)
tensor([[0.0000, 0.0000, 0.4286, 0.5714]])
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._common import NEG_INF, check_logits, col, is_neutral, knob
from ._topk import chunked_topk

WINDOW = 256


def nucleus_size(x: Tensor, top_p: Tensor, z: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """How many tokens each row keeps, the value of the last kept one, and the value after it
    (``[B, 1]`` each; "after" equals "last" when it is unknown, which flags a possible tie).

    ``z`` overrides the normaliser: ``sum(exp(x - max))`` over the *whole* row, float64 — used
    when ``x`` holds only a candidate subset of the row.
    """
    B, V = x.shape
    m = x.amax(-1, keepdim=True)
    if z is None:
        z = torch.exp(x - m).sum(-1, keepdim=True, dtype=torch.float64)
    target = top_p.double() * z
    W = min(WINDOW, V)
    while True:
        v, _ = chunked_topk(x, W)
        cum = torch.exp(v.double() - m.double()).cumsum(-1)
        short = (cum < target).sum(-1, keepdim=True)  # tokens before the one that crosses p
        if W == V or bool((short < W).all()):
            break
        W = min(W * 8, V)
    n = (short + 1).clamp(max=W)
    last = v.gather(1, n - 1)
    padded = torch.cat([v, last if W < V else v.new_full((B, 1), NEG_INF)], dim=1)
    return n, last, padded.gather(1, n)


def _top_p_(x: Tensor, top_p, z: Tensor | None = None) -> Tensor:
    p = col(top_p, x)
    n, last, after = nucleus_size(x, p, z)
    keep = x >= last
    # Ties at the boundary value: keep only as many (lowest ids first) as the prefix holds.
    over = (after == last) & (p < 1)
    if bool(over.any()):
        rows = over.view(-1).nonzero().view(-1)
        xr, lr = x[rows], last[rows]
        eq = xr == lr
        need = n[rows] - (xr > lr).sum(-1, keepdim=True)
        keep[rows] = (xr > lr) | (eq & (eq.cumsum(-1) <= need))
    keep |= p >= 1
    return x.masked_fill_(~keep, NEG_INF)


def top_p(logits: Tensor, *, top_p=1.0) -> Tensor:
    """Keep the nucleus of mass ``top_p`` of each row."""
    check_logits(logits)
    top_p = knob("top_p", top_p, logits)
    x = logits.clone()
    return x if is_neutral("top_p", top_p) else _top_p_(x, top_p)

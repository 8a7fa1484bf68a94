"""Top-p (nucleus): keep the smallest set of most likely tokens whose mass reaches p.

``top_p`` (neutral 1.0 = off), in [0, 1]. Sort descending (stable: ties by token id), keep the
shortest prefix whose cumulative probability reaches p, *including* the token that crosses it.
"Reaches" is within float32 rounding of p, where transformers and llama.cpp agree: with
p = (0.3, 0.1, 0.1, 0.5) and top_p = 0.8 both keep exactly {0.5, 0.3}, although 0.8 as a float32 is
0.800000012 and 0.5 + 0.3 is not more than 0.8. ``top_p = 0`` keeps exactly the top token (ties: the
lowest id), as llama.cpp and the OpenAI API accept 0. (Holtzman et al. 2019, "The Curious Case of
Neural Text Degeneration".)

No sort of the vocabulary: `temperance.ops._cut` states the rule and finds the cut with a mass
histogram (masses in float64); on CPU the native kernel does it in one pass per row.

>>> import torch
>>> p = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
>>> torch.softmax(top_p(p.log(), top_p=0.7), -1)
tensor([[0.0000, 0.0000, 0.4286, 0.5714]])
>>> (top_p(torch.tensor([[0.3, 0.1, 0.1, 0.5]]).log(), top_p=0.8) > float("-inf")).tolist()
[[True, False, False, True]]
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..stage import Knob, Stage
from . import _native
from ._common import NEG_INF, check_logits, col, is_neutral, knob
from ._cut import goal, kept, prefix_cut
from ._topk import chunked_topk

SMALL = 4096  # rows up to this length are cut directly; longer ones extract candidates first


def normaliser(x: Tensor, m: Tensor, rows: int = 8) -> Tensor:
    """``sum(exp(x - m))`` per row in float64 (the difference too: in float32 it is off by ~1e-7),
    ``[B, 1]``. Eight rows at a time through one small buffer: one float64 copy of all of x would
    cost ~8x more here (page faults on a fresh allocation of 8·B·V bytes)."""
    B, V = x.shape
    z = torch.empty(B, 1, dtype=torch.float64, device=x.device)
    buf = torch.empty(min(rows, B), V, dtype=torch.float64, device=x.device)
    for i in range(0, B, rows):
        b = buf[: min(rows, B - i)]
        z[i:i + rows] = b.copy_(x[i:i + rows]).sub_(m[i:i + rows].double()).exp_().nan_to_num_(0.0).sum(
            -1, keepdim=True)
    return z


def _masses(v: Tensor, m: Tensor) -> Tensor:
    return torch.exp(v.double() - m.double()).nan_to_num_(0.0)  # 0 for -inf (and empty rows)


def _threshold_guess(x: Tensor, g: Tensor, m: Tensor, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """A logit t above which a little more than the goal's mass lies (the 64 largest logits counted
    exactly, the rest of the mass curve from a strided sample of ~2k logits, rescaled so that its
    total is the true normaliser), and two lower fallbacks."""
    B, V = x.shape
    head, _ = chunked_topk(x, min(64, V))
    head_mass = _masses(head, m).cumsum(-1)
    sample, _ = torch.sort(x[:, :: max(1, V // 2048)], dim=-1, descending=True)
    tail = torch.where(sample < head[:, -1:], _masses(sample, m), 0.0).cumsum(-1)
    tail = tail * ((z - head_mass[:, -1:]).clamp(min=0) / tail[:, -1:].clamp(min=1e-300))
    aim = (g + (1 - g) / 4).clamp(max=1) * z  # aim past the goal so that the set holds the nucleus
    j = (head_mass[:, -1:] + tail < aim).sum(-1, keepdim=True)
    last = sample.shape[1] - 1
    t = torch.where(head_mass[:, -1:] >= aim,
                    head.gather(1, (head_mass < aim).sum(-1, keepdim=True).clamp(max=head.shape[1] - 1)),
                    sample.gather(1, (j + 16).clamp(max=last)))
    return t, sample.gather(1, (2 * j + 64).clamp(max=last)), torch.full_like(t, NEG_INF)


def _cut_torch(x: Tensor, g: Tensor):
    """``(kstar, q, c)``: the cut of every row in pure torch, and for long rows the candidate set it
    was made on (None for short rows, which are cut whole). Long rows: extract every token above a
    guessed threshold (lowered for rows whose extracted mass falls short of the goal), cut that set;
    it holds every token down to the crossing one and all its ties, so the cut is the row's."""
    from ..candidates import Candidates  # candidates imports ops; keep the edge one-way at import

    if x.shape[1] <= SMALL:
        m = x.amax(-1, keepdim=True)
        w = _masses(x, m)
        return (*prefix_cut(-x, w, g * w.sum(-1, keepdim=True)), None)
    m = x.amax(-1, keepdim=True)
    z = normaliser(x, m)
    target = g * z
    guesses = _threshold_guess(x, g, m, z)
    t = guesses[0]
    for lower in guesses[1:] + (None,):
        c = Candidates.where(x, x >= t)
        w = _masses(c.logits, m)
        short = w.sum(-1, keepdim=True) < target * (1 + 1e-9)  # margin: the cut's sum runs in order
        if lower is None or not bool(short.any()):
            break
        t = torch.where(short, lower, t)
    return (*prefix_cut(-c.logits, w, target), c)


def _native_cut(x: Tensor, top_p):
    return _native.cut(x, 0, top_p) if _native.usable(x) else None


def nucleus_candidates(x: Tensor, top_p):
    """The exact top-p survivors of dense ``x`` ``[B, V]`` as `Candidates`, without a sort of V."""
    from ..candidates import Candidates

    r = _native_cut(x, top_p)
    if r is not None:
        kstar, center, q, n, K = r
        return Candidates(*_native.survivors(x, 0, kstar, center, q, K), x.shape[1])
    kstar, q, c = _cut_torch(x, goal(col(top_p, x, torch.float32)))
    if c is None:
        return Candidates.where(x, kept(-x, kstar, q))
    return Candidates.where(c.logits, kept(-c.logits, kstar, q), c.ids, c.vocab_size)


def _top_p_(x: Tensor, top_p) -> Tensor:
    """Top-p on ``x`` in place (x is the caller's own working tensor)."""
    r = _native_cut(x, top_p)
    if r is not None:
        kstar, center, q, _, _ = r
        return _native.dense(x, 0, kstar, center, q, out=x)
    kstar, q, _ = _cut_torch(x, goal(col(top_p, x, torch.float32)))
    return x.masked_fill_(~kept(-x, kstar, q), NEG_INF)


def top_p(logits: Tensor, *, top_p=1.0) -> Tensor:
    """Keep the nucleus of mass ``top_p`` of each row."""
    check_logits(logits)
    top_p = knob("top_p", top_p, logits)
    if is_neutral("top_p", top_p):
        return logits.clone()
    x = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
    if _native.usable(x):
        r = _native_cut(x, top_p)
        if r is not None:
            kstar, center, q, _, _ = r
            return _native.dense(x, 0, kstar, center, q).to(logits.dtype)
    return _top_p_(x.clone() if x is logits else x, top_p).to(logits.dtype)


STAGE = Stage(
    "top_p", apply=lambda x, batch: _top_p_(x, batch.knob("top_p")),
    compact=lambda x, batch: nucleus_candidates(x, batch.knob("top_p")),
    aliases=("nucleus",), paper="Holtzman et al. 2019", summary="nucleus, including the crossing token",
    active=lambda p: p.top_p < 1,
    knobs=(Knob("top_p", 1.0, lambda x: 0 <= x <= 1, "[0, 1] (1 = off)",
                "keep the most likely tokens up to probability mass p (0: the top token only)",
                flag="--top-p"),))

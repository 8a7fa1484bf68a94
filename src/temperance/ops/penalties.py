"""Repetition, frequency and presence penalties over the recent context.

Counts are taken over the last ``penalty_last_n`` tokens of prompt + output (64 by default, as
llama.cpp; -1 = the whole context, 0 = off). Then, for every token seen:

* ``repetition_penalty`` θ (neutral 1.0; CTRL, Keskar et al. 2019): a positive logit is divided by
  θ, a negative one multiplied by θ — once per distinct token, whatever its count;
* ``frequency_penalty`` α_f and ``presence_penalty`` α_p (neutral 0; OpenAI):
  ``l −= count·α_f + [count > 0]·α_p``, after the repetition penalty.

Only the B·L history entries are touched (a gather and a scatter), never the whole vocabulary.
The new values are computed in float32 (float64 for float64 logits) and saturate at the dtype's
largest finite value: a penalised logit that leaves the range stays a logit (a penalty never
masks, and never makes +inf or NaN; with every knob within ±1e30, ``count·α_f + α_p`` is far below
float32's range, so a saturated value cannot come back).

>>> import torch
>>> x = torch.tensor([[2.0, -1.0, 1.0, 0.5]])
>>> penalties(x, history=[[0, 1, 0]], repetition_penalty=2.0, presence_penalty=0.5)
tensor([[ 0.5000, -2.5000,  1.0000,  0.5000]])
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..stage import Knob, Stage
from ._common import LIMIT, as_history, check_history, check_logits, col, is_neutral, knob


def window(history: Tensor, last_n) -> Tensor:
    """``[B, W]`` view of the last n tokens per row (-1 outside a row's window); n=-1: all."""
    B, L = history.shape
    n = col(last_n, history, torch.int64)
    n = torch.where(n < 0, L, n)
    W = int(n.max()) if B else 0
    h = history[:, L - min(W, L):]
    start = h.shape[1] - n  # [B, 1]: first column inside each row's window
    pos = torch.arange(h.shape[1], device=h.device)
    return h.masked_fill(pos < start, -1)


def token_counts(h: Tensor) -> Tensor:
    """For every entry of ``h`` [B, W] the number of times its token occurs in its row."""
    s, _ = torch.sort(h, dim=-1)
    return (torch.searchsorted(s, h, right=True) - torch.searchsorted(s, h, right=False))


def penalized(old: Tensor, counts: Tensor, repetition_penalty, frequency_penalty, presence_penalty,
              penalty_last_n) -> Tensor:
    """The rule itself, on gathered logits ``old`` ``[B, T]`` of tokens seen ``counts`` times
    (>= 1) in the window: their new values, in old's dtype. Rows with ``penalty_last_n = 0`` and
    non-finite logits are left as they are. (The chain's sparse top-k path and the native kernel
    apply this same rule; tests pin them to it.)"""
    w = torch.float64 if old.dtype == torch.float64 else torch.float32  # (float32 as the fast path)
    o = old.to(w)
    theta = col(repetition_penalty, o, w)
    new = torch.where(o > 0, o / theta, o * theta)
    new = new - counts.to(w) * col(frequency_penalty, o, w) - col(presence_penalty, o, w)
    off = col(penalty_last_n, o, torch.int64) == 0
    fmax = torch.finfo(old.dtype).max  # a float32 overflow (±inf) saturates: it is not a mask
    return torch.where(off | ~torch.isfinite(old), old, new.clamp(-fmax, fmax).to(old.dtype))


def _penalties_(x: Tensor, history: Tensor, repetition_penalty, frequency_penalty,
                presence_penalty, penalty_last_n) -> Tensor:
    h = window(history, penalty_last_n)
    valid = h >= 0
    if not bool(valid.any()):
        return x
    tok = h.clamp(min=0)
    new = penalized(x.gather(1, tok), token_counts(h), repetition_penalty, frequency_penalty,
                    presence_penalty, penalty_last_n)
    rows = torch.arange(x.shape[0], device=x.device).view(-1, 1).expand_as(tok)
    # Duplicates of a token in a row write the same value, so the scatter order does not matter.
    x[rows[valid], tok[valid]] = new[valid]
    return x


def penalties(logits: Tensor, *, history, repetition_penalty=1.0, frequency_penalty=0.0,
              presence_penalty=0.0, penalty_last_n=64) -> Tensor:
    """Penalise tokens seen in the last ``penalty_last_n`` tokens of ``history``."""
    check_logits(logits)
    args = [knob(n, v, logits) for n, v in (
        ("repetition_penalty", repetition_penalty), ("frequency_penalty", frequency_penalty),
        ("presence_penalty", presence_penalty), ("penalty_last_n", penalty_last_n))]
    x = logits.clone()
    if all(is_neutral(n, v) for n, v in zip(
            ("repetition_penalty", "frequency_penalty", "presence_penalty"), args[:3])):
        return x
    if not isinstance(args[3], Tensor) and args[3] == 0:
        return x
    return _penalties_(x, check_history(as_history(history, x.shape[0], x.device), x.shape[1]), *args)


def _stage_(x: Tensor, batch) -> Tensor:
    k = batch.knob
    return _penalties_(x, batch.history, k("repetition_penalty"), k("frequency_penalty"),
                       k("presence_penalty"), k("penalty_last_n"))


def _bounded(x) -> bool:
    return -LIMIT <= x <= LIMIT


STAGE = Stage(
    "penalties", apply=_stage_, reads_ids=True, aliases=("repetition_penalty", "repeat_penalty", "penalty"),
    paper="Keskar et al. 2019 (CTRL); OpenAI API",
    summary="CTRL repetition penalty, then OpenAI frequency/presence, over the last n tokens",
    active=lambda p: p.penalty_last_n != 0 and (
        p.repetition_penalty != 1 or p.frequency_penalty != 0 or p.presence_penalty != 0),
    knobs=(
        Knob("repetition_penalty", 1.0, lambda x: 0 < x <= LIMIT, "(0, 1e30] (1 = off)",
             "divide positive, multiply negative logits of seen tokens", flag="--repeat-penalty",
             request=("repeat_penalty", "repetition_penalty")),
        Knob("frequency_penalty", 0.0, _bounded, "[-1e30, 1e30] (0 = off)",
             "subtract count x this from each seen token", flag="--frequency-penalty"),
        Knob("presence_penalty", 0.0, _bounded, "[-1e30, 1e30] (0 = off)",
             "subtract this from every seen token", flag="--presence-penalty"),
        Knob("penalty_last_n", 64, lambda x: x >= -1, "integers >= -1 (-1 = whole context, 0 = off)",
             "how many recent tokens the penalties count", flag="--repeat-last-n",
             request=("repeat_last_n", "penalty_last_n"), integer=True),
    ))

"""DRY ("Don't Repeat Yourself"): penalise the token that would extend a repeated sequence.

p-e-w's sampler (text-generation-webui PR #5677) with llama.cpp's semantics (ported from KoboldCpp,
pi6am). For each candidate token t, let L(t) be the longest suffix of the context window that also
occurs earlier in the window immediately followed by t. If ``L(t) >= dry_allowed_length`` A::

    l_t −= dry_multiplier · dry_base ^ (L(t) − A)      (the exponent clamped so the power stays finite)

Knobs: ``dry_multiplier`` (neutral 0 = off; 0.8 is the usual value), ``dry_base`` (1.75),
``dry_allowed_length`` (2), ``dry_penalty_last_n`` (-1 = whole context, 0 = off) and the sequence
breakers: a match never crosses the most recent breaker occurrence, and a token that is itself a
single-token breaker is never penalised. Here breakers are token-id sequences (one list per row or
one for all); `expand_sequence_breakers` turns strings (``"\\n"``, ``":"``, ``'"'``, ``"*"``) into
every token sequence that can spell them, through a tokenizer.

>>> import torch
>>> x = torch.zeros(1, 4)
>>> dry(x, history=[[0, 1, 2, 0, 1]], dry_multiplier=1.0, dry_base=1.1, dry_sequence_breakers=[])
tensor([[ 0.,  0., -1.,  0.]])
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from ..errors import TemperanceError
from ..stage import Knob, Stage
from ._common import as_history, check_history, check_logits, col, is_neutral, knob

Breakers = Sequence[Sequence[int]]  # token-id sequences; a one-token sequence is a plain breaker
FLOAT_MAX_LOG = 88.7228391


def expand_sequence_breakers(breakers: Sequence[str], token_texts: Sequence[str],
                             encode: Callable[[str], list[int]], max_chars: int = 40,
                             max_tail: int = 20) -> list[tuple[int, ...]]:
    """Every token sequence that can spell each breaker string (llama.cpp's rule).

    A token whose text contains the breaker is a one-token breaker. A token whose text ends with a
    proper prefix of the breaker starts a breaker: the rest of the string, tokenised (at most
    ``max_tail`` tokens), must follow it. ``token_texts[i]`` is token i decoded on its own.

    >>> expand_sequence_breakers(["ab"], ["a", "b", "xab", "xa"], lambda s: [1] if s == "b" else [])
    [(0, 1), (2,), (3, 1)]
    """
    seqs: list[tuple[int, ...]] = []
    for s in breakers:
        s = s[:max_chars]
        if not s:
            continue
        for tok, word in enumerate(token_texts):
            if s in word:
                seqs.append((tok,))
                continue
            start = word.find(s[0])
            while start != -1:
                tail = word[start:]
                if s.startswith(tail):  # the word ends with a proper prefix of s
                    seq = (tok, *encode(s[len(tail):])[:max_tail])
                    if seq not in seqs:
                        seqs.append(seq)
                start = word.find(s[0], start + 1)
    return seqs


def _rep_limit(h: Tensor, start: Tensor, breakers: list[Breakers]) -> Tensor:
    """Tokens after the most recent breaker occurrence in each row's window ``[B]``."""
    B, L = h.shape
    limit = (L - start.view(-1)).clone()
    for b in range(B):
        if not breakers[b]:
            continue
        row, s0 = h[b], int(start[b])
        heads: dict[int, list[tuple[int, ...]]] = {}
        for seq in breakers[b]:
            heads.setdefault(seq[0], []).append(tuple(seq[1:]))
        is_head = torch.isin(row, torch.tensor(list(heads), dtype=row.dtype, device=row.device))
        for p in reversed(is_head.nonzero().view(-1).tolist()):  # most recent head first
            if p < s0:
                break
            i = L - 1 - p  # tokens after the head
            tails = [t for t in heads[int(row[p])] if len(t) <= i and
                     all(int(row[p + 1 + q]) == t[q] for q in range(len(t)))]
            if tails:
                limit[b] = i - max(len(t) for t in tails)
                break
    return limit


def _dry_(x: Tensor, history: Tensor, dry_multiplier, dry_base, dry_allowed_length,
          dry_penalty_last_n, breakers: list[Breakers]) -> Tensor:
    B, L = history.shape
    if L < 2:
        return x
    dev = x.device
    n = col(dry_penalty_last_n, history, torch.int64).view(-1)
    mult = col(dry_multiplier, x).view(-1)
    allowed = col(dry_allowed_length, history, torch.int64).view(-1)
    filled = (history >= 0).sum(-1)
    n = torch.where(n < 0, filled, torch.minimum(n, filled))  # window length per row
    start = L - n
    limit = _rep_limit(history, start, breakers)
    on = (mult > 0) & (n > allowed) & (limit >= allowed)
    if not bool(on.any()):
        return x
    # count[j]: length of the longest common suffix of h[..j] and h[..L-1] inside the window,
    # capped at the breaker limit (llama.cpp's reverse Z-algorithm, here one offset at a time).
    pos = torch.arange(L - 1, device=dev)
    alive = on.view(-1, 1) & (pos >= start.view(-1, 1))
    count = torch.zeros(B, L - 1, dtype=torch.int64, device=dev)
    cap = int(limit[on].max())
    for k in range(cap):
        src = pos - k
        ok = src >= start.view(-1, 1)
        alive &= ok & (history[:, src.clamp(min=0)] == history[:, L - 1 - k:L - k]) & (k < limit.view(-1, 1))
        if not bool(alive.any()):
            break
        count += alive
    hit = count >= allowed.view(-1, 1)
    r, j = hit.nonzero(as_tuple=True)
    if r.numel() == 0:
        return x
    tok = history[r, j + 1]
    length = count[r, j]
    singles = [{s[0] for s in br if len(s) == 1} for br in breakers]
    exempt = torch.tensor([int(t) in singles[int(b)] for b, t in zip(r.tolist(), tok.tolist())],
                          dtype=torch.bool, device=dev)
    r, tok, length = r[~exempt], tok[~exempt], length[~exempt]
    key = r * x.shape[1] + tok
    uniq, inv = torch.unique(key, return_inverse=True)
    best = torch.zeros(uniq.shape, dtype=torch.int64, device=dev).scatter_reduce_(
        0, inv, length, reduce="amax", include_self=False)
    rows, toks = uniq // x.shape[1], uniq % x.shape[1]
    base = col(dry_base, x).view(-1)[rows].double()
    exp = (best - allowed[rows]).double()
    max_exp = torch.where(base > 1.000001, torch.floor(FLOAT_MAX_LOG / base.log()), math.inf)
    pen = mult[rows].double() * base.pow(torch.minimum(exp, max_exp))
    old = x[rows, toks]
    fmax = torch.finfo(x.dtype).max  # a penalty, not a mask: the logit stays finite
    x[rows, toks] = torch.where(torch.isfinite(old), (old.double() - pen).clamp(min=-fmax).to(x.dtype), old)
    return x


def dry(logits: Tensor, *, history, dry_multiplier=0.0, dry_base=1.75, dry_allowed_length=2,
        dry_penalty_last_n=-1, dry_sequence_breakers: Breakers | Sequence[Breakers] = ()) -> Tensor:
    """Apply the DRY penalty; breakers are token-id sequences (one list for all rows, or per row)."""
    check_logits(logits)
    B = logits.shape[0]
    args = [knob(name, v, logits) for name, v in (
        ("dry_multiplier", dry_multiplier), ("dry_base", dry_base),
        ("dry_allowed_length", dry_allowed_length), ("dry_penalty_last_n", dry_penalty_last_n))]
    breakers = per_row_breakers(dry_sequence_breakers, B)
    x = logits.clone()
    if is_neutral("dry_multiplier", args[0]):
        return x
    return _dry_(x, check_history(as_history(history, B, x.device), x.shape[1]), *args, breakers)


def per_row_breakers(value, B: int) -> list[Breakers]:
    """Normalise breakers given for all rows (a list of sequences) or per row (a list of lists)."""
    value = list(value)
    if (len(value) == B and any(value) and all(
            isinstance(v, (list, tuple)) and all(isinstance(s, (list, tuple)) for s in v) for v in value)):
        rows = value
    else:
        rows = [value] * B
    out = []
    for row in rows:
        seqs = []
        for s in row:
            if isinstance(s, str):
                raise TemperanceError("dry_sequence_breakers for ops.dry are token-id sequences; "
                                      "expand strings with expand_sequence_breakers(...) first")
            seq = (int(s),) if isinstance(s, int) else tuple(int(t) for t in s)
            if not seq:
                raise TemperanceError("dry_sequence_breakers must not contain an empty sequence")
            seqs.append(seq)
        out.append(seqs)
    return out


DEFAULT_BREAKERS = ("\n", ":", '"', "*")


def check_breakers(breakers: Any) -> tuple[str, ...]:
    """Sequence breakers as given by a user: a list of non-empty strings."""
    if isinstance(breakers, str) or not isinstance(breakers, (list, tuple)) or not all(
            isinstance(b, str) and b for b in breakers):
        raise TemperanceError(
            f"dry_sequence_breakers must be a list of non-empty strings, got {breakers!r}")
    return tuple(breakers)


def _breakers_from_json(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list):
        raise TemperanceError(f"dry_sequence_breakers must be a list of strings, got {v!r}")
    return check_breakers(v)


def _stage_(x: Tensor, batch) -> Tensor:
    k = batch.knob
    return _dry_(x, batch.history, k("dry_multiplier"), k("dry_base"), k("dry_allowed_length"),
                 k("dry_penalty_last_n"), batch.dry_breakers)


STAGE = Stage(
    "dry", apply=_stage_, reads_ids=True, paper="p-e-w, text-generation-webui #5677 (llama.cpp semantics)",
    summary="penalise the token that would extend a repeated sequence",
    active=lambda p: p.dry_multiplier > 0 and p.dry_penalty_last_n != 0,
    knobs=(
        Knob("dry_multiplier", 0.0, lambda x: math.isfinite(x) and x >= 0, "[0, inf) (0 = off)",
             "DRY penalty strength (0.8 is usual)", flag="--dry-multiplier"),
        Knob("dry_base", 1.75, lambda x: math.isfinite(x) and x >= 1, "[1, inf)",
             "growth of the penalty with the repeat's length", flag="--dry-base"),
        Knob("dry_allowed_length", 2, lambda x: x >= 1, "integers >= 1",
             "repeats longer than this are penalised", flag="--dry-allowed-length", integer=True),
        Knob("dry_penalty_last_n", -1, lambda x: x >= -1, "integers >= -1 (-1 = whole context, 0 = off)",
             "how many recent tokens DRY looks at", flag="--dry-penalty-last-n", integer=True),
        Knob("dry_sequence_breakers", DEFAULT_BREAKERS, None, "a list of non-empty strings",
             "strings a repeat never crosses (repeatable flag; replaces the defaults)",
             flag="--dry-sequence-breaker", check_value=check_breakers, from_json=_breakers_from_json,
             parse_flag=list),
    ))

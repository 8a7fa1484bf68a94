"""DRY ("Don't Repeat Yourself"): penalise the token that would extend a repeated sequence.

p-e-w's sampler (text-generation-webui PR #5677) with llama.cpp's semantics (ported from KoboldCpp,
pi6am). For each candidate token t, let L(t) be the longest suffix of the context window that also
occurs earlier in the window immediately followed by t. If ``L(t) >= dry_allowed_length`` A::

    l_t −= dry_multiplier · dry_base ^ (L(t) − A)      (the exponent clamped so the power stays finite)

Knobs: ``dry_multiplier`` (neutral 0 = off; 0.8 is the usual value), ``dry_base`` (1.75),
``dry_allowed_length`` (2), ``dry_penalty_last_n`` (-1 = whole context, 0 = off) and the sequence
breakers: a match never crosses the most recent breaker occurrence, and a token that is itself a
single-token breaker is never penalised. Here breakers are token-id sequences (one list per row or
one for all); `expand_sequence_breakers` turns strings (``"\\n"``, ``":"``, ``'"'``, ``"*"``; at most
64 of at most 40 characters) into every token sequence that can spell them, through a tokenizer.

``dry_allowed_length = 0`` (llama.cpp and vLLM accept it): any repeat is penalised. Every token
that follows some position of the window gets at least ``dry_multiplier · base^0``, more where a
longer suffix matches. Hand table (multiplier 1, base 1.1, no breakers, zero logits, V = 4):

=================  =======  ===============================
history            allowed  logits after DRY
=================  =======  ===============================
0 1 2 0 1          2        [0, 0, -1, 0]   (``0 1`` → 2)
0 1 2 0 1          1        [0, 0, -1.1, 0]
0 1 2 0 1          0        [-1, -1, -1.21, 0]
=================  =======  ===============================

The penalty is computed in float64 and saturates at the dtype's most negative finite value.

>>> import torch
>>> x = torch.zeros(1, 4)
>>> dry(x, history=[[0, 1, 2, 0, 1]], dry_multiplier=1.0, dry_base=1.1, dry_sequence_breakers=[])
tensor([[ 0.,  0., -1.,  0.]])
"""

from __future__ import annotations

import bisect
import itertools
import math
import re
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from ..errors import TemperanceError
from ..stage import Knob, Stage
from ._common import LIMIT, as_history, check_history, check_logits, col, fit, is_neutral, knob

Breakers = Sequence[Sequence[int]]  # token-id sequences; a one-token sequence is a plain breaker
FLOAT_MAX_LOG = 88.7228391


MAX_BREAKERS = 64   # breaker strings per request
MAX_CHARS = 40      # characters per breaker string (llama.cpp's cap)
MAX_TAIL = 20       # tokens after the head token (llama.cpp's cap)
_SEP = "\x00"
_CACHE: dict[tuple, tuple[Sequence[str], list[tuple[int, ...]]]] = {}  # most recent last
_CACHE_SIZE = 8  # (a hostile 64-breaker list expands to ~350k sequences on a 49k vocabulary)


def check_breakers(breakers: Any, name: str = "dry_sequence_breakers") -> tuple[str, ...]:
    """Breaker strings as a tuple; at most MAX_BREAKERS non-empty strings of at most MAX_CHARS."""
    if isinstance(breakers, str) or not isinstance(breakers, (list, tuple)) or not all(
            isinstance(b, str) and b for b in breakers):
        raise TemperanceError(f"{name} must be a list of non-empty strings, got {breakers!r}")
    if len(breakers) > MAX_BREAKERS:
        raise TemperanceError(f"{name} must hold at most {MAX_BREAKERS} strings, got {len(breakers)}")
    for b in breakers:
        if len(b) > MAX_CHARS:
            raise TemperanceError(f"{name} strings must be at most {MAX_CHARS} characters, got "
                                  f"{len(b)} ({b[:20]!r}...)")
    return tuple(breakers)


def expand_sequence_breakers(breakers: Sequence[str], token_texts: Sequence[str],
                             encode: Callable[[str], list[int]]) -> list[tuple[int, ...]]:
    """Every token sequence that can spell each breaker string (llama.cpp's rule).

    A token whose text contains the breaker is a one-token breaker. A token whose text ends with a
    proper prefix of the breaker starts a breaker: the rest of the string, tokenised (at most
    ``MAX_TAIL`` tokens), must follow it. ``token_texts[i]`` is token i decoded on its own; ``encode``
    is the same tokenizer's text → ids. Breakers are bounded (`check_breakers`).

    The vocabulary is searched as one joined string (C-speed substring search), the tails are
    encoded once per distinct remainder, so the cost is linear in vocabulary × breakers; results are
    cached per (vocabulary list, breaker list), and a cached result is the same list object (shared
    by every request that asks for it, so its compiled form is reused too: do not mutate it).

    >>> expand_sequence_breakers(["ab"], ["a", "b", "xab", "xa"], lambda s: [1] if s == "b" else [])
    [(0, 1), (2,), (3, 1)]
    """
    breakers = check_breakers(breakers)
    key = (id(token_texts), len(token_texts), breakers)
    hit = _CACHE.pop(key, None)
    if hit is not None and hit[0] is token_texts:  # the same live list (no id reuse)
        _CACHE[key] = hit
        return hit[1]
    seqs = _expand(breakers, token_texts, encode)
    _CACHE[key] = (token_texts, seqs)
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.pop(next(iter(_CACHE)))
    return seqs


def _expand(breakers: tuple[str, ...], texts: Sequence[str], encode) -> list[tuple[int, ...]]:
    joined = "".join(t + _SEP for t in texts)
    starts = list(itertools.accumulate((len(t) + 1 for t in texts), initial=0))
    odd = [i for i, t in enumerate(texts) if _SEP in t]  # searched one by one
    odd_set = set(odd)
    out: dict[tuple[int, ...], None] = {}
    for s in breakers:
        tails: dict[int, tuple[int, ...]] = {}

        def tail(k: int) -> tuple[int, ...]:  # the tokens spelling s[k:], encoded once per k
            if k not in tails:
                ids = encode(s[k:])
                if not all(isinstance(t, int) and 0 <= t for t in ids):
                    raise TemperanceError(f"encode({s[k:]!r}) must return token ids, got {ids!r}")
                tails[k] = tuple(ids[:MAX_TAIL])
            return tails[k]

        found: list[tuple[int, int]] = []  # (token, -k): the token's text ends with s[:k]
        contains: set[int] = set()
        if _SEP in s:
            words = enumerate(texts)
        else:
            words = ((i, texts[i]) for i in odd)
            for m in re.finditer(re.escape(s), joined):
                contains.add(bisect.bisect_right(starts, m.start()) - 1)
            for k in range(1, len(s)):
                for m in re.finditer(re.escape(s[:k] + _SEP), joined):
                    i = bisect.bisect_right(starts, m.start()) - 1
                    if i not in odd_set:  # (a separator inside such a token is not its end)
                        found.append((i, -k))
        for i, word in words:
            if s in word:
                contains.add(i)
            else:
                found += [(i, -k) for k in range(1, len(s)) if word.endswith(s[:k])]
        found = [(i, nk) for i, nk in found if i not in contains] + [(i, 1) for i in contains]
        for i, nk in sorted(found):  # token order; per token the longest prefix first
            out[(i,) if nk == 1 else (i, *tail(-nk))] = None
    return list(out)


class _Compiled:
    """A breaker list prepared for the per-step scan: the single-token breakers as a tensor, the
    longer ones as a sorted tensor of n-gram hashes per length, and the exact set to verify hits."""

    P, M = (1_000_003, 2_147_483_647), (2_147_483_629, 2_147_483_587)  # two (base, modulus) pairs

    def __init__(self, breakers: Breakers):
        self.singles = torch.tensor(sorted({s[0] for s in breakers if len(s) == 1}), dtype=torch.int64)
        self.exact = {tuple(s) for s in breakers if len(s) > 1}
        by_len: dict[int, list[tuple[int, ...]]] = {}
        for seq in self.exact:
            by_len.setdefault(len(seq), []).append(seq)
        self.hashes = {m: self.hash(torch.tensor(seqs, dtype=torch.int64)).sort().values
                       for m, seqs in by_len.items()}

    @classmethod
    def hash(cls, grams: Tensor) -> Tensor:
        """One int64 key per row of ``grams`` ``[N, m]`` (two polynomial hashes mod ~2^31)."""
        m = grams.shape[-1]
        key = torch.zeros(grams.shape[:-1], dtype=torch.int64, device=grams.device)
        for P, M in zip(cls.P, cls.M):
            pw = torch.tensor([pow(P, j, M) for j in range(m)], dtype=torch.int64, device=grams.device)
            key = key * (1 << 31) + torch.remainder(torch.remainder(grams, M) * pw, M).sum(-1).remainder(M)
        return key


_COMPILED: dict[int, tuple[Breakers, _Compiled]] = {}


def _compiled(breakers: Breakers) -> _Compiled:
    """The compiled form of one breaker list, cached by identity (a batch reuses its lists)."""
    hit = _COMPILED.pop(id(breakers), None)
    if hit is None or hit[0] is not breakers:
        hit = (breakers, _Compiled(breakers))
    _COMPILED[id(breakers)] = hit
    while len(_COMPILED) > 16:
        _COMPILED.pop(next(iter(_COMPILED)))
    return hit[1]


def _member(q: Tensor, keys: Tensor) -> Tensor:
    """``q`` in the sorted 1-D ``keys`` (binary search: no sort of the keys per call)."""
    if keys.numel() == 0:
        return torch.zeros_like(q, dtype=torch.bool)
    i = torch.searchsorted(keys, q).clamp(max=keys.numel() - 1)
    return keys[i] == q


def _rep_limit(h: Tensor, start: Tensor, breakers: list[Breakers]) -> Tensor:
    """Tokens after the most recent breaker occurrence in each row's window ``[B]``.

    A breaker occurs at p when the window holds its whole sequence from p on; at the most recent
    such p (ties: the longest sequence) the limit is the number of tokens after the sequence.
    Vectorised: every n-gram length the list has is hashed over the row at once."""
    B, L = h.shape
    limit = (L - start.view(-1)).clone()
    for b in range(B):
        if not breakers[b]:
            continue
        c, row, s0 = _compiled(breakers[b]), h[b], int(start[b])
        best = torch.full((L,), -1, dtype=torch.int64, device=h.device)  # longest tail found at p
        best[_member(row, c.singles.to(h.device))] = 0
        for m, keys in sorted(c.hashes.items()):
            if m > L - s0:
                continue
            grams = row.unfold(0, m, 1)                                 # [L - m + 1, m]
            hit = _member(_Compiled.hash(grams), keys.to(h.device))
            hit[: s0] = False
            for p in reversed(hit.nonzero().view(-1).tolist()):        # verify (hash collisions)
                if tuple(grams[p].tolist()) in c.exact:
                    best[p] = torch.clamp(best[p], min=m - 1)
                    break  # only the most recent occurrence of each length can matter
        best[: s0] = -1
        found = (best >= 0).nonzero().view(-1)
        if found.numel():
            p = int(found[-1])
            limit[b] = (L - 1 - p) - int(best[p])
    return limit


def _exempt(r: Tensor, tok: Tensor, breakers: list[Breakers]) -> Tensor:
    """Is ``tok`` (a token of row ``r``) a single-token breaker of its row? (never penalised)"""
    exempt = torch.zeros_like(tok, dtype=torch.bool)
    groups: dict[int, list[int]] = {}
    for b in set(r.tolist()):
        if breakers[b]:
            groups.setdefault(id(breakers[b]), []).append(b)
    for rows in groups.values():
        singles = _compiled(breakers[rows[0]]).singles.to(tok.device)
        if singles.numel():
            mine = torch.isin(r, torch.tensor(rows, device=r.device))
            exempt |= mine & _member(tok, singles)
    return exempt


def _dry_(x: Tensor, history: Tensor, dry_multiplier, dry_base, dry_allowed_length,
          dry_penalty_last_n, breakers: list[Breakers]) -> Tensor:
    B, L = history.shape
    if L < 2:
        return x
    dev = x.device
    n = col(dry_penalty_last_n, history, torch.int64).view(-1)
    mult = col(dry_multiplier, x, torch.float64).view(-1)
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
    # (allowed = 0: every position of the window counts, even one with no match)
    hit = (count >= allowed.view(-1, 1)) & on.view(-1, 1) & (pos >= start.view(-1, 1))
    r, j = hit.nonzero(as_tuple=True)
    if r.numel() == 0:
        return x
    tok = history[r, j + 1]
    length = count[r, j]
    keep = ~_exempt(r, tok, breakers)
    r, tok, length = r[keep], tok[keep], length[keep]
    key = r * x.shape[1] + tok
    uniq, inv = torch.unique(key, return_inverse=True)
    best = torch.zeros(uniq.shape, dtype=torch.int64, device=dev).scatter_reduce_(
        0, inv, length, reduce="amax", include_self=False)
    rows, toks = uniq // x.shape[1], uniq % x.shape[1]
    base = col(dry_base, x, torch.float64).view(-1)[rows]
    exp = (best - allowed[rows]).double()
    max_exp = torch.where(base > 1.000001, torch.floor(FLOAT_MAX_LOG / base.log()), math.inf)
    pen = mult[rows] * base.pow(torch.minimum(exp, max_exp))
    old = x[rows, toks]  # a penalty, not a mask: the logit saturates, it stays finite
    x[rows, toks] = torch.where(torch.isfinite(old), fit(old.double() - pen, x.dtype), old)
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
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise TemperanceError(f"dry_sequence_breakers must be a list of token-id sequences, got {value!r}")
    value = list(value)
    if (len(value) == B and any(value) and all(
            isinstance(v, (list, tuple)) and all(isinstance(s, (list, tuple)) for s in v) for v in value)):
        rows = value
    else:
        rows = [value] * B
    done: dict[int, list[tuple[int, ...]]] = {}  # one list per distinct input row, shared
    for row in rows:
        if id(row) not in done:
            done[id(row)] = _normal(row)
    return [done[id(row)] for row in rows]


_NORMAL: dict[tuple, list[tuple[int, ...]]] = {}


def _normal(row) -> list[tuple[int, ...]]:
    """One row's breakers as validated tuples; a recent equal row gives the same list back (so its
    compiled form is reused too)."""
    try:
        key = tuple(row)
        hash(key)
    except TypeError:  # lists inside: not cached
        return [_sequence(s) for s in row]
    out = _NORMAL.pop(key, None)
    if out is None:
        out = [_sequence(s) for s in row]
    _NORMAL[key] = out
    while len(_NORMAL) > 16:
        _NORMAL.pop(next(iter(_NORMAL)))
    return out


def _sequence(s) -> tuple[int, ...]:
    if isinstance(s, str):
        raise TemperanceError("dry_sequence_breakers for ops.dry are token-id sequences; "
                          "expand strings with expand_sequence_breakers(...) first")
    seq = (s,) if isinstance(s, int) else tuple(s) if isinstance(s, (list, tuple)) else None
    if seq is None or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in seq):
        raise TemperanceError(f"dry_sequence_breakers must hold token ids (integers >= 0) or "
                              f"sequences of them, got {s!r}")
    if not seq:
        raise TemperanceError("dry_sequence_breakers must not contain an empty sequence")
    return seq


DEFAULT_BREAKERS = ("\n", ":", '"', "*")


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
        Knob("dry_multiplier", 0.0, lambda x: 0 <= x <= LIMIT, "[0, 1e30] (0 = off)",
             "DRY penalty strength (0.8 is usual)", flag="--dry-multiplier"),
        Knob("dry_base", 1.75, lambda x: 1 <= x <= LIMIT, "[1, 1e30]",
             "growth of the penalty with the repeat's length", flag="--dry-base"),
        Knob("dry_allowed_length", 2, lambda x: x >= 0, "integers >= 0 (0 = any repeat)",
             "repeats at least this long are penalised", flag="--dry-allowed-length", integer=True),
        Knob("dry_penalty_last_n", -1, lambda x: x >= -1, "integers >= -1 (-1 = whole context, 0 = off)",
             "how many recent tokens DRY looks at", flag="--dry-penalty-last-n", integer=True),
        Knob("dry_sequence_breakers", DEFAULT_BREAKERS, None,
             f"a list of at most {MAX_BREAKERS} non-empty strings of at most {MAX_CHARS} characters",
             "strings a repeat never crosses (repeatable flag; replaces the defaults)",
             flag="--dry-sequence-breaker", check_value=check_breakers, from_json=_breakers_from_json,
             parse_flag=list),
    ))

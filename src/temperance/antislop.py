"""Phrase banning with backtracking (the antislop idea, sam-paech/antislop-sampler), hard-ban form.

Given banned strings, the loop checks each row's decoded output after every token. When the text
comes to contain a banned phrase, the row rewinds to the token where the phrase began, that token
is banned at that position (bans accumulate across retries there), and generation continues from
the rewound prefix. Caps: `max_retries_per_position` rewinds to the same position (then the phrase
is accepted) and `max_backtracks` per row in all. If a position's bans would leave no token at all
(for example under a grammar), the bans there are dropped for that step.

Matching is on the decoded text, case-insensitive by default (lower-cased character by
character), so a phrase is caught whatever tokens spell it. Unlike antislop's soft down-weighting,
this is a hard ban on the starting token (its `adjustment_strength` → ∞).

Streaming: a row's tokens are held back until no banned phrase can still end up covering them,
i.e. until their text lies more than `max_len - 1` characters before the end of the text; the rest
is released when the row finishes. So a banned phrase is never emitted, and the events of a row
with bans arrive in bursts, up to `max_len` characters late.

>>> bans = PhraseBans(["a tapestry"])
>>> row = bans.row()
>>> [row.push(t, s, None) for t, s in enumerate(["It", " is", " a", " tap", "estry"])]
[None, None, None, None, 2]
>>> row.banned_at(2), row.text
({2}, 'it is')
"""

from __future__ import annotations

from typing import Any, Iterable

from .errors import TemperanceError

__all__ = ["PhraseBans", "RowBans", "load_phrases"]


def _lower(s: str) -> str:
    """Lower-case without changing the length (characters whose lower case is longer stay)."""
    return "".join(c if len(c.lower()) != 1 else c.lower() for c in s)


def load_phrases(path: str) -> list[str]:
    """One phrase per line; blank lines are skipped (surrounding spaces are kept, newline stripped)."""
    try:
        with open(path, encoding="utf-8") as f:
            return [line.rstrip("\r\n") for line in f if line.strip()]
    except OSError as e:
        raise TemperanceError(f"cannot read ban-phrases file {path}: {e.strerror}") from None


class PhraseBans:
    """A list of banned strings and the caps; `row()` gives one row's state."""

    def __init__(self, phrases: Iterable[str], *, ignore_case: bool = True,
                 max_retries_per_position: int = 4, max_backtracks: int = 64):
        phrases = [str(p) for p in phrases]
        if not phrases or any(p == "" for p in phrases):
            raise TemperanceError(f"ban_phrases must be non-empty strings, got {phrases!r}")
        for name, v in (("max_retries_per_position", max_retries_per_position),
                        ("max_backtracks", max_backtracks)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise TemperanceError(f"{name} must be an integer >= 0, got {v!r}")
        self.ignore_case = ignore_case
        self.phrases = sorted({_lower(p) if ignore_case else p for p in phrases}, key=len, reverse=True)
        self.max_len = max(len(p) for p in self.phrases)
        self.max_retries_per_position = max_retries_per_position
        self.max_backtracks = max_backtracks

    def row(self) -> "RowBans":
        return RowBans(self)


class RowBans:
    """One row: its generated text (case-folded), each token's character span, the held entries,
    and the bans per position (position = index of the generated token)."""

    def __init__(self, bans: PhraseBans):
        self.bans = bans
        self.text = ""
        self.spans: list[tuple[int, int]] = []
        self.tokens: list[int] = []
        self.pending: list[Any] = []          # entries of tokens not yet released
        self.released = 0                     # tokens released so far
        self.banned: dict[int, set[int]] = {}
        self.retries: dict[int, int] = {}
        self.backtracks = 0

    def banned_at(self, pos: int) -> set[int]:
        return self.banned.get(pos, set())

    def push(self, token: int, delta: str, entry: Any) -> int | None:
        """Add a token and its text delta; return the position to rewind to, or None."""
        old = len(self.text)
        self.text += _lower(delta) if self.bans.ignore_case else delta
        self.spans.append((old, len(self.text)))
        self.tokens.append(int(token))
        self.pending.append(entry)
        if not delta:
            return None
        start = None
        for p in self.bans.phrases:  # occurrences that end inside the new delta
            i = self.text.find(p, max(0, old - len(p) + 1))
            if i != -1 and (start is None or i < start):
                start = i
        if start is None:
            return None
        k = next(i for i, (_, b) in enumerate(self.spans) if b > start)
        while k > 0 and self.spans[k - 1][0] == self.spans[k - 1][1] == self.spans[k][0]:
            k -= 1  # tokens that only held bytes of the same character
        if (k < self.released or self.backtracks >= self.bans.max_backtracks
                or self.retries.get(k, 0) >= self.bans.max_retries_per_position):
            return None
        self.backtracks += 1
        self.retries[k] = self.retries.get(k, 0) + 1
        self.banned.setdefault(k, set()).add(self.tokens[k])
        for d in (self.banned, self.retries):
            for p in [p for p in d if p > k]:
                del d[p]
        self.text = self.text[: self.spans[k][0]]
        del self.spans[k:], self.tokens[k:], self.pending[k - self.released:]
        return k

    def release(self, final: bool = False) -> list[Any]:
        """Entries that are now safe (all of them when `final`), in order."""
        if final:
            out, self.pending = self.pending, []
        else:
            limit = len(self.text) - (self.bans.max_len - 1)
            n = 0
            while n < len(self.pending) and self.spans[self.released + n][1] <= limit:
                n += 1
            while n > 0 and self.spans[self.released + n - 1][0] == self.spans[self.released + n - 1][1]:
                n -= 1  # a token that only holds bytes stays with the token that completes them
            out, self.pending = self.pending[:n], self.pending[n:]
        self.released += len(out)
        return out

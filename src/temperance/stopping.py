"""Stop strings, matched on detokenized text across token boundaries.

A stop string can arrive split over several text deltas ("###" as "#", "##"), so the matcher
holds back the tail of the text that could still be the start of a stop string, and releases it
once it cannot. When a stop string completes, the text before it is released, the stop string
itself is not, and the row is stopped. EOS ids and max tokens are token-level checks the loop
makes itself; this module is only about text.

One `StopStrings` per row; `copy()` it when the loop forks a row.

>>> s = StopStrings(["\\n\\nUser:"])
>>> s.push("Hello.\\n")          # "\\n" may start the stop string: held back
('Hello.', False)
>>> s.push("\\nUser: hi")
('', True)
>>> s.matched
'\\n\\nUser:'
"""

from __future__ import annotations

from typing import Iterable

__all__ = ["StopStrings"]


class StopStrings:
    """Match any of `stops` in one row's stream of text deltas.

    Args:
        stops: the stop strings (non-empty). An empty collection passes all text through.

    Attributes:
        matched: the stop string that ended the row, or None.
    """

    __slots__ = ("stops", "matched", "_held")

    def __init__(self, stops: Iterable[str] = ()):
        self.stops = tuple(dict.fromkeys(stops))
        if any(not isinstance(s, str) or not s for s in self.stops):
            raise ValueError(f"stop strings must be non-empty strings, got {self.stops!r}")
        self.matched: str | None = None
        self._held = ""

    @property
    def stopped(self) -> bool:
        return self.matched is not None

    def push(self, text: str) -> tuple[str, bool]:
        """Add a text delta; return `(text safe to emit now, stopped)`.

        After a stop, every further push returns `("", True)`.
        """
        if self.matched is not None:
            return "", True
        buf = self._held + text
        # Earliest match wins; the held part holds no full stop string (it would have matched).
        first, hit = len(buf) + 1, None
        for s in self.stops:
            i = buf.find(s)
            if i != -1 and i < first:
                first, hit = i, s
        if hit is not None:
            self.matched, self._held = hit, ""
            return buf[:first], True
        keep = self._partial(buf)
        self._held = buf[len(buf) - keep:] if keep else ""
        return buf[: len(buf) - keep], False

    def flush(self) -> str:
        """Release held-back text at the end of generation (it never became a stop string)."""
        held, self._held = self._held, ""
        return "" if self.matched is not None else held

    def copy(self) -> "StopStrings":
        new = StopStrings.__new__(StopStrings)
        new.stops, new.matched, new._held = self.stops, self.matched, self._held
        return new

    def _partial(self, buf: str) -> int:
        """Length of the longest tail of `buf` that is a proper prefix of some stop string."""
        best = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(buf)), best, -1):
                if buf.endswith(s[:k]):
                    best = k
                    break
        return best

"""Incremental detokenization: token ids in, one text delta out per token, never a broken character.

Decoding each token on its own is wrong in two ways:
- a multi-byte UTF-8 character (emoji, CJK) can be split over several byte-level tokens, and each
  piece alone decodes to U+FFFD;
- SentencePiece-style decoders drop the leading space of the first token they see, so
  `decode([▁world])` is "world" but `decode([▁hello, ▁world])` is "hello world".

The prefix-offset technique (from TGI and vLLM) fixes both: keep a small window of previous
tokens, decode the window with and without the new tokens, and emit the difference. While the
decoded text ends with U+FFFD, hold the tokens back: a later token may complete the character.

Works with any object that has `decode(ids) -> str`; knows nothing about models or sampling.

>>> class Bytes:  # toy tokenizer: token i is byte i
...     def decode(self, ids):
...         return bytes(ids).decode("utf-8", errors="replace")
>>> d = Detokenizer(Bytes())
>>> [d.push(b) for b in "né".encode()]   # é is two bytes: nothing until it is whole
['n', '', 'é']
"""

from __future__ import annotations

from typing import Any, Sequence

__all__ = ["Detokenizer", "CONTEXT_TOKENS"]

CONTEXT_TOKENS = 5  # prompt tokens kept as left context: enough for any decoder's space rules
_REPLACEMENT = "\ufffd"


class Detokenizer:
    """Turn one row's token ids into text deltas, one `push` per token.

    Args:
        tokenizer: anything with `decode(ids) -> str`.
        context: the prompt's ids (only the last `CONTEXT_TOKENS` are used), so the first
            output token decodes as it would after the prompt (its leading space kept).

    Concatenating every `push` result and then `flush()` gives the decoded text of all pushed
    tokens (in context): `decode(context + out)[len(decode(context)):]`.
    """

    __slots__ = ("tokenizer", "_tokens", "_read")

    def __init__(self, tokenizer: Any, context: Sequence[int] = ()):
        self.tokenizer = tokenizer
        # The window: `_tokens[:_read]` is already-emitted left context, the rest is pending.
        self._tokens = [int(t) for t in list(context)[max(0, len(context) - CONTEXT_TOKENS):]]
        self._read = len(self._tokens)

    def push(self, token: int) -> str:
        """Add one token; return the text it completes ("" while a character is incomplete)."""
        self._tokens.append(int(token))
        return self._emit(final=False)

    def flush(self) -> str:
        """Return any held-back text (an incomplete character decodes as U+FFFD) at the end."""
        return self._emit(final=True)

    def copy(self) -> "Detokenizer":
        """An independent copy (for a row forked by `select` with a repeated index)."""
        new = Detokenizer.__new__(Detokenizer)
        new.tokenizer, new._tokens, new._read = self.tokenizer, list(self._tokens), self._read
        return new

    def _emit(self, final: bool) -> str:
        decode = self.tokenizer.decode
        prefix_text = decode(self._tokens[: self._read])
        new_text = decode(self._tokens)
        if len(new_text) <= len(prefix_text) or (new_text.endswith(_REPLACEMENT) and not final):
            return ""
        delta = new_text[len(prefix_text):]
        # Slide the window: the just-emitted tokens become the left context of the next decode.
        del self._tokens[: self._read]
        self._read = len(self._tokens)
        return delta

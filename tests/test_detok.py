"""Detokenizer: deltas never split a character, and concatenate to the full decode."""

from __future__ import annotations

import pytest

from conftest_runtime_helpers import byte_level_tokenizer, sentencepiece_tokenizer, smollm2_runtime
from temperance.detok import Detokenizer

TEXTS = [
    "hello world",
    "hello 中文 world😀!",
    "😀😀 naïve café, the 🇫🇷 flag",
    "a\nb  c\t",
]


def stream(tok, ids, context=()):
    d = Detokenizer(tok, context)
    deltas = [d.push(i) for i in ids]
    return deltas, d.flush()


@pytest.mark.parametrize("make", [byte_level_tokenizer, sentencepiece_tokenizer], ids=["bytelevel", "spm"])
@pytest.mark.parametrize("text", TEXTS)
def test_deltas_concatenate_to_full_decode_and_are_whole_characters(make, text):
    tok = make()
    ids = tok.encode(text).ids
    deltas, tail = stream(tok, ids)
    assert "".join(deltas) == tok.decode(ids) and tail == ""
    assert all("\ufffd" not in d for d in deltas)
    if any(ord(c) > 127 for c in text):
        assert "" in deltas    # some token completed no character: held back, not garbled


def test_emoji_bytes_held_until_complete():
    tok = byte_level_tokenizer()
    ids = tok.encode("a😀").ids
    assert len(ids) == 5                                   # "a" + 4 byte tokens
    assert stream(tok, ids)[0] == ["a", "", "", "", "😀"]


def test_sentencepiece_leading_space_kept():
    """Decoding `▁world` alone drops its space; the window of previous tokens keeps it."""
    tok = sentencepiece_tokenizer()
    hello, world = tok.encode("hello world").ids
    assert tok.decode([world]) == "world"
    assert stream(tok, [hello, world])[0] == ["hello", " world"]
    # With the prompt as context, the first output token keeps its space too.
    assert stream(tok, [world], context=[hello])[0] == [" world"]


def test_context_continuation_equals_decode_of_whole():
    tok = byte_level_tokenizer()
    prompt = tok.encode("hello ").ids
    out = tok.encode("中文 ok").ids
    deltas, _ = stream(tok, out, context=prompt)
    assert "".join(deltas) == tok.decode(prompt + out)[len(tok.decode(prompt)):]


def test_flush_releases_incomplete_character():
    tok = byte_level_tokenizer()
    ids = tok.encode("x😀").ids[:-1]                    # the emoji's last byte never comes
    deltas, tail = stream(tok, ids)
    assert deltas == ["x", "", "", ""]
    assert tail and set(tail) == {"\ufffd"} and "".join(deltas) + tail == tok.decode(ids)


def test_copy_is_independent():
    tok = byte_level_tokenizer()
    a = Detokenizer(tok)
    e = tok.encode("é").ids
    assert a.push(e[0]) == ""
    b = a.copy()
    assert a.push(e[1]) == "é"
    assert b.push(tok.encode("a").ids[0]) == "\ufffda"   # b's own continuation


@pytest.mark.slow
def test_real_tokenizer_multibyte():
    tok = smollm2_runtime().tokenizer
    text = "Lily said 你好 and smiled 😀🎉. Ünïcödé!"
    ids = tok.encode(text)
    deltas, tail = stream(tok, ids)
    assert "".join(deltas) + tail == tok.decode(ids) == text
    assert all("\ufffd" not in d for d in deltas)

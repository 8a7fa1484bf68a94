"""Phrase banning with backtracking: the banned phrase never appears, the text goes on."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from conftest_runtime_helpers import hf_tokenizer, smollm2_runtime, tiny_llama
from temperance import SamplingParams, TemperanceError
from temperance.antislop import PhraseBans
from temperance.generate import generate, generate_text
from temperance.runtime.hf import HFRuntime

torch.set_num_threads(1)
PROMPT = [1, 40, 41, 42]
GREEDY = SamplingParams(temperature=0)


@pytest.fixture(scope="module")
def rt():
    return HFRuntime(tiny_llama(), hf_tokenizer())


def _plain(rt, n_tok=30):
    return generate_text(rt, [PROMPT], GREEDY, max_tokens=n_tok)[0][0].text


def test_banned_phrase_does_not_appear_and_text_continues(rt):
    base = _plain(rt)
    phrase = base[8:12]                          # a phrase greedy decoding does produce
    assert len(phrase) == 4 and phrase.lower() in base.lower()
    out = generate_text(rt, [PROMPT], GREEDY, max_tokens=30, ban_phrases=[phrase])[0][0]
    assert phrase.lower() not in out.text.lower()
    start = base.lower().find(phrase.lower())
    assert len(out.tokens) == 30 and out.finish_reason == "length"    # continued to the budget
    assert out.text[:max(0, start - 4)] == base[:max(0, start - 4)]


def test_streaming_matches_collected_and_never_leaks(rt):
    base = _plain(rt)
    bans = [base[5:8], base[15:19]]
    events = list(generate(rt, [PROMPT], GREEDY, max_tokens=30, ban_phrases=bans))
    text = "".join(e.text for e in events)
    done = generate_text(rt, [PROMPT], GREEDY, max_tokens=30, ban_phrases=bans)[0][0]
    assert text == done.text and [e.token for e in events] == done.tokens
    assert events[-1].finish_reason == "length" and all(e.finish_reason is None for e in events[:-1])
    assert not any(b.lower() in text.lower() for b in bans)


def test_same_output_without_a_hit(rt):
    base = generate_text(rt, [PROMPT], GREEDY, max_tokens=20)[0][0]
    out = generate_text(rt, [PROMPT], GREEDY, max_tokens=20, ban_phrases=["\x00never\x00"])[0][0]
    assert (out.text, out.tokens) == (base.text, base.tokens)


def test_batched_rows_with_bans_equal_alone(rt):
    prompts = [PROMPT, [1, 60, 61]]
    base = _plain(rt)
    ban = [base[8:12]]
    together = generate_text(rt, prompts, GREEDY, max_tokens=20, ban_phrases=ban)
    for i, p in enumerate(prompts):
        alone = generate_text(rt, [p], GREEDY, max_tokens=20, ban_phrases=ban)[0][0]
        assert together[i][0].tokens == alone.tokens


def test_retry_cap_accepts_phrase_eventually(rt):
    base = _plain(rt)
    bans = PhraseBans([base[8:12]], max_retries_per_position=0)
    out = generate_text(rt, [PROMPT], GREEDY, max_tokens=30, ban_phrases=bans)[0][0]
    assert out.text == base                       # no retries allowed: nothing changes


def test_bad_phrases():
    with pytest.raises(TemperanceError):
        PhraseBans([""])
    with pytest.raises(TemperanceError):
        PhraseBans(["a"], max_backtracks=-1)


@pytest.mark.slow
def test_smollm2_banned_phrase():
    rt = smollm2_runtime()
    base = generate_text(rt, ["Once upon a time"], GREEDY, max_tokens=24)[0][0].text
    assert "nova haven" in base.lower()           # what greedy SmolLM2 says unbanned
    out = generate_text(rt, ["Once upon a time"], GREEDY, max_tokens=24, ban_phrases=["Nova Haven"])[0][0]
    assert "nova haven" not in out.text.lower() and len(out.tokens) == 24
    assert out.text.startswith(", the city of")


def test_bans_with_a_grammar_roll_the_matcher_back(rt):
    pytest.importorskip("llguidance")
    import re

    from temperance import constrain as C

    con = C.regex(r"[a-d]{16}")
    base = generate_text(rt, [PROMPT], GREEDY, max_tokens=20, constraint=con)[0][0].text
    ban = base[6:9]
    out = generate_text(rt, [PROMPT], GREEDY, max_tokens=20, constraint=con, ban_phrases=[ban])[0][0]
    assert re.fullmatch(r"[a-d]{16}", out.text) and ban not in out.text, (base, out.text)
    assert out.text[:6] == base[:6]

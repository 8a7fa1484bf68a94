"""The decoding loop on a tiny random Llama with a byte-level tokenizer (fast, offline)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from conftest_runtime_helpers import hf_tokenizer, tiny_llama
from temperance import SamplingParams, TemperanceError
from temperance.generate import generate, generate_text
from temperance.runtime.hf import HFRuntime

torch.set_num_threads(1)
EOS = 2
PROMPTS = [[1, 40, 41, 42, 43, 44, 45], [1, 60], [1, 70, 71, 72]]


@pytest.fixture(scope="module")
def model():
    return tiny_llama()


@pytest.fixture()
def rt(model):
    return HFRuntime(model, hf_tokenizer())


def toks(rt, prompts, params, **kw):
    return [[c.tokens for c in row] for row in generate_text(rt, prompts, params, **kw)]


class EosBoost:
    """A runtime wrapper that makes EOS the model's favourite token (+100 on its logit)."""

    def __init__(self, rt):
        self.rt, self.tokenizer = rt, rt.tokenizer
        self.eos_token_ids, self.max_context = rt.eos_token_ids, rt.max_context

    def _boost(self, logits):
        logits[:, EOS] += 100.0
        return logits

    def prefill(self, prompts):
        return self._boost(self.rt.prefill(prompts))

    def decode(self, tokens):
        return self._boost(self.rt.decode(tokens))

    def select(self, index):
        self.rt.select(index)


def test_streaming_equals_collected(rt):
    p = SamplingParams(temperature=1.2, top_k=30, seed=7)
    events = list(generate(rt, PROMPTS, p, max_tokens=12, n=2))
    done = generate_text(rt, PROMPTS, p, max_tokens=12, n=2)
    for r in range(len(PROMPTS)):
        for s in range(2):
            ev = [e for e in events if (e.request, e.sample) == (r, s)]
            assert [e.token for e in ev] == done[r][s].tokens
            assert "".join(e.text for e in ev) == done[r][s].text
            assert ev[-1].finish_reason == done[r][s].finish_reason
            assert all(e.finish_reason is None for e in ev[:-1])


def test_greedy_equals_transformers(rt, model):
    for ids in PROMPTS:
        ours = toks(rt, [ids], SamplingParams(temperature=0), max_tokens=20)[0][0]
        hf = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                            max_new_tokens=20, do_sample=False, pad_token_id=0, eos_token_id=EOS)
        assert ours == hf[0, len(ids):].tolist()


def test_batch_of_mixed_lengths_equals_each_alone(rt):
    params = [SamplingParams(temperature=1.0, top_k=40, seed=s) for s in (1, 2, 3)]
    together = toks(rt, PROMPTS, params, max_tokens=15)
    for r, ids in enumerate(PROMPTS):
        assert toks(rt, [ids], params[r], max_tokens=15)[0] == together[r]


def test_stop_string_split_across_tokens():
    # vocab 97 = 3 specials + the 94 printable ASCII byte symbols: readable text, one char a token
    rt = HFRuntime(tiny_llama(vocab_size=97), hf_tokenizer())
    p = SamplingParams(temperature=0)
    full = generate_text(rt, [[1, 40, 50]], p, max_tokens=20, min_tokens=20)[0][0]
    assert full.finish_reason == "length" and len(full.text) == 20
    stop = full.text[6:9]  # 3 characters = 3 tokens
    cut = generate_text(rt, [[1, 40, 50]], p, max_tokens=20, min_tokens=20, stop=[stop])[0][0]
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.find(stop)]
    assert stop not in cut.text


def test_n_samples_differ_and_reproduce(rt):
    p = SamplingParams(temperature=1.5, seed=11)
    a = toks(rt, [PROMPTS[1]], p, n=4, max_tokens=10)[0]
    b = toks(rt, [PROMPTS[1]], p, n=4, max_tokens=10)[0]
    assert a == b
    assert len({tuple(x) for x in a}) == 4
    # sample s of a seeded request is the request with seed + s, alone
    assert toks(rt, [PROMPTS[1]], SamplingParams(temperature=1.5, seed=13), max_tokens=10)[0][0] == a[2]


def test_per_row_knobs_and_orders(rt):
    ids = PROMPTS[2]
    greedy = toks(rt, [ids], SamplingParams(temperature=0), max_tokens=12)[0][0]
    params = [SamplingParams(temperature=0),
              SamplingParams(top_k=1, temperature=5, seed=3, samplers="vllm"),  # another chain
              SamplingParams(temperature=5, seed=1)]
    out = toks(rt, [ids, ids, ids], params, max_tokens=12)
    assert out[0][0] == greedy
    assert out[1][0] == greedy          # top_k=1 keeps the argmax whatever the temperature
    assert out[2][0] != greedy          # temperature 5, untruncated: wanders off


def test_min_tokens_bans_eos(rt):
    rt, p = EosBoost(rt), SamplingParams(temperature=0)
    assert toks(rt, [PROMPTS[0]], p, max_tokens=10)[0][0] == [EOS]
    c = generate_text(rt, [PROMPTS[0]], p, max_tokens=10, min_tokens=5)[0][0]
    assert EOS not in c.tokens[:5] and c.tokens[5] == EOS and c.finish_reason == "stop"
    assert len(c.tokens) == 6


def test_logprob_fields(rt):
    ev = list(generate(rt, [PROMPTS[0]], SamplingParams(temperature=0.7, top_k=5, seed=0),
                       max_tokens=4, top_n=3, raw_logprobs=True))
    for e in ev:
        assert len(e.top) == 3 and e.top[0][1] >= e.top[1][1] >= e.top[2][1]
        assert e.logprob <= 0 and e.raw_logprob <= 0 and e.logprob >= e.raw_logprob - 1e-5
    assert ev[-1].finish_reason == "length"


def test_text_prompt_chat_and_dry(rt):
    p = SamplingParams(temperature=0, dry_multiplier=0.8, seed=0)  # string breakers expanded
    c = generate_text(rt, ["hello world"], p, max_tokens=5, chat=True)[0][0]
    assert len(c.tokens) <= 5 and c.finish_reason in ("stop", "length")


def test_bad_prompts(rt):
    with pytest.raises(TemperanceError, match="empty"):
        list(generate(rt, [""], SamplingParams()))
    with pytest.raises(TemperanceError, match="max_context"):
        list(generate(rt, [[1] * 300], SamplingParams()))
    with pytest.raises(TemperanceError, match="SamplingParams"):
        list(generate(rt, ["a", "b"], [SamplingParams()]))

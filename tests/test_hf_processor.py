"""temperance.hf.LogitsProcessor inside transformers' model.generate (tiny random Llama)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from conftest_runtime_helpers import hf_tokenizer, tiny_llama
from temperance import SamplingParams, TemperanceError
from temperance.generate import generate_text
from temperance.hf import LogitsProcessor
from temperance.runtime.hf import HFRuntime

torch.set_num_threads(1)
IDS = [1, 40, 41, 42, 43]
OFF = dict(top_k=None, top_p=None, temperature=None, pad_token_id=0, eos_token_id=2)  # HF's own warpers off


@pytest.fixture(scope="module")
def model():
    return tiny_llama()


def hf_generate(model, proc, n_new=15, **kw):
    ids = torch.tensor([IDS])
    return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_new,
                          logits_processor=[proc], **OFF, **kw)


def test_greedy_with_our_chain_equals_our_generate(model):
    p = SamplingParams(temperature=0, top_k=3, repetition_penalty=1.8)  # penalties see the prompt
    out = hf_generate(model, LogitsProcessor(p), do_sample=False)[0, len(IDS):].tolist()
    ours = generate_text(HFRuntime(model, hf_tokenizer()), [IDS], p, max_tokens=15)[0][0].tokens
    assert out == ours
    plain = generate_text(HFRuntime(model, hf_tokenizer()), [IDS], SamplingParams(temperature=0),
                          max_tokens=15)[0][0].tokens
    assert plain != ours  # the penalty did something, so the processor really ran


def test_sampling_keeps_only_the_chain_survivors(model):
    proc = LogitsProcessor(SamplingParams(top_k=3, seed=0))
    res = hf_generate(model, proc, do_sample=True, return_dict_in_generate=True, output_scores=True)
    new = res.sequences[0, len(IDS):].tolist()
    assert len(res.scores) == len(new) > 0
    for tok, scores in zip(new, res.scores):
        finite = torch.isfinite(scores[0])
        assert int(finite.sum()) == 3 and bool(finite[tok])


@pytest.mark.parametrize("params", [
    SamplingParams(top_n_sigma=1.0, xtc_probability=0.5, xtc_threshold=0.05, seed=1),
    SamplingParams(mirostat=2, seed=2),
    SamplingParams(dry_multiplier=0.8, dry_sequence_breakers=(), min_p=0.05, seed=3),
])
def test_samplers_hf_lacks_run(model, params):
    proc = LogitsProcessor(params)
    out = hf_generate(model, proc, n_new=8, do_sample=True)
    assert out.shape[1] > len(IDS)
    if params.mirostat:
        assert proc.state is not None and proc.state.mu.shape == (1,)


def test_dry_string_breakers_need_ids_or_tokenizer():
    with pytest.raises(TemperanceError, match="dry_breakers"):
        LogitsProcessor(SamplingParams(dry_multiplier=0.8))
    from temperance.runtime.hf import HFTokenizer

    proc = LogitsProcessor(SamplingParams(dry_multiplier=0.8), tokenizer=HFTokenizer(hf_tokenizer()))
    assert proc.dry_breakers  # "\n", ":", ... expanded to token ids

"""Special tokens (EOS `<|im_end|>`, `<|im_start|>`, ...) are control, not text: they never appear
in generated text, in the per-token texts of logprobs (what the playground renders), in the
playground's step text, or in beam search texts. Their names stay only where they label a
candidate (token tables, the playground's bars). A tiny random Llama with a ChatML byte-level
tokenizer (specials: 0 <|endoftext|>, 1 <|im_start|>, 2 <|im_end|> = EOS); logit_bias forces them.
"""

from __future__ import annotations

import pytest
import torch

from conftest_runtime_helpers import hf_tokenizer, tiny_llama
from temperance.params import SamplingParams
from temperance.runtime.hf import HFRuntime

START, END = 1, 2   # <|im_start|>, <|im_end|>


@pytest.fixture(scope="module")
def rt():
    return HFRuntime(tiny_llama(vocab_size=262, eos_token_id=END), hf_tokenizer())


def test_output_texts_blank_every_special_token(rt):
    tok = rt.tokenizer
    assert tok.special_ids >= {0, START, END}
    names, out = tok.token_texts(), tok.output_texts()
    assert names[END] == "<|im_end|>" and names[START] == "<|im_start|>"      # labels keep names
    assert [out[i] for i in (0, START, END)] == ["", "", ""]
    assert all(out[i] == names[i] for i in range(len(names)) if i not in tok.special_ids)


def test_generated_text_has_no_special_tokens(rt):
    from temperance.generate import generate_text
    from temperance.search import BeamSettings, beam_search

    c = generate_text(rt, ["hello"], SamplingParams(temperature=0, logit_bias={START: 50.0}),
                      max_tokens=3)[0][0]
    assert c.tokens == [START] * 3 and c.text == ""
    bias = SamplingParams(temperature=1.0, seed=1, logit_bias={END: 50.0})
    h = beam_search(rt, ["hello"], BeamSettings(beams=2, sample=True), bias, max_tokens=4)[0][0]
    assert h.tokens[-1] == END and "<|" not in h.text


@pytest.fixture(scope="module")
def client(rt):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from temperance.server import ServerConfig, create_app
    return TestClient(create_app(rt, ServerConfig(model_name="tiny")))


def test_logprob_tokens_are_the_text_they_add(client):
    def complete(**kw):
        body = {"model": "tiny", "prompt": "hello", "temperature": 0, "logprobs": 2, **kw}
        return client.post("/v1/completions", json=body).json()["choices"][0]

    plain = complete(max_tokens=6)
    assert "".join(plain["logprobs"]["tokens"]) == plain["text"]
    start = complete(max_tokens=3, logit_bias={str(START): 50})
    assert start["text"] == "" and start["logprobs"]["tokens"] == ["", "", ""]
    end = complete(max_tokens=3, logit_bias={str(END): 50})
    assert end["finish_reason"] == "stop" and end["logprobs"]["tokens"] == [""]
    chat = client.post("/v1/chat/completions", json={
        "model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": 0,
        "max_tokens": 3, "logprobs": True, "logit_bias": {str(END): 50}}).json()["choices"][0]
    assert chat["message"]["content"] == ""
    assert [(t["token"], t["bytes"]) for t in chat["logprobs"]["content"]] == [("", [])]


def test_inspect_chosen_special_token_adds_no_text(client):
    d = client.post("/v1/inspect", json={"model": "tiny", "prompt": "hello", "top": 3,
                                         "temperature": 0, "logit_bias": {str(START): 50}}).json()
    assert d["chosen"] == {"id": START, "label": "<|im_start|>", "eos": False, "text": ""}
    assert {"id": START, "text": "<|im_start|>"} in d["tokens"]   # a bar label keeps the name

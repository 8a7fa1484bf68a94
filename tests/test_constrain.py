"""Constrained decoding (llguidance): masks first, EOS only when the grammar accepts, clear errors."""

from __future__ import annotations

import json
import os
import re

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

pytest.importorskip("llguidance")

from conftest_runtime_helpers import hf_tokenizer, smollm2_runtime, tiny_llama
from temperance import SamplingParams, TemperanceError
from temperance import constrain as C
from temperance.generate import generate_text
from temperance.runtime.hf import HFRuntime

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def rt():
    return HFRuntime(tiny_llama(), hf_tokenizer())


def texts(rt, prompt, constraint, n=3, max_tokens=40, **kw):
    params = SamplingParams(temperature=1.0, seed=3)
    out = generate_text(rt, [prompt], params, n=n, max_tokens=max_tokens, constraint=constraint, **kw)
    return [(c.text, c.finish_reason) for c in out[0]]


def test_regex_outputs_match(rt):
    pat = r"[a-c]{2,5}-[0-9]{3}"
    for text, finish in texts(rt, [1, 40, 41], C.regex(pat), n=4):
        assert finish == "stop" and re.fullmatch(pat, text), text


def test_unconstrained_tiny_model_does_not_match(rt):  # the constraint is what makes the test pass
    for text, _ in texts(rt, [1, 40, 41], None, n=4, max_tokens=12):
        assert not re.fullmatch(r"[a-c]{2,5}-[0-9]{3}", text)


def test_choices(rt):
    opts = ["alpha", "beta", "gamma"]
    out = texts(rt, [1, 50], C.choices(opts), n=6)
    assert all(t in opts and f == "stop" for t, f in out), out


def test_gbnf_llama_cpp_style(rt):
    g = C.grammar('# arithmetic\nroot ::= expr\nexpr ::= term (("+" | "-") term)*\n'
                  'term ::= [0-9]{1,3}\n')
    assert g.kind == "gbnf"
    for text, finish in texts(rt, [1, 60], g, n=4, max_tokens=30):
        assert re.fullmatch(r"[0-9]{1,3}([+-][0-9]{1,3})*", text), text


def test_lark_grammar(rt):
    g = C.grammar('start: "x" NUM\nNUM: /[0-9]{2}/\n')
    assert g.kind == "lark"
    for text, finish in texts(rt, [1, 60], g, n=3):
        assert re.fullmatch(r"x[0-9]{2}", text) and finish == "stop", text


def test_eos_only_when_accepting(rt):
    # EOS boosted by +100 would end every row at once; the grammar forbids it until 3 digits.
    class Boost:
        def __init__(self, rt):
            self.rt, self.tokenizer, self.vocab_size = rt, rt.tokenizer, rt.vocab_size
            self.eos_token_ids, self.max_context = rt.eos_token_ids, rt.max_context

        def prefill(self, p):
            x = self.rt.prefill(p); x[:, 2] += 100; return x

        def decode(self, t):
            x = self.rt.decode(t); x[:, 2] += 100; return x

        def select(self, i):
            self.rt.select(i)

    b = Boost(rt)
    assert 2 in b.eos_token_ids
    for text, finish in texts(b, [1, 60], C.regex(r"[0-9]{3,6}"), n=3):
        assert finish == "stop" and re.fullmatch(r"[0-9]{3}", text), text


@pytest.mark.parametrize("make", [
    lambda: C.json_schema('{"type": 5}'),
    lambda: C.json_schema("{not json"),
    lambda: C.grammar("root ::= (\"a\" | \n"),
    lambda: C.grammar("start: foo(\n"),
    lambda: C.regex("(unclosed"),
    lambda: C.choices([]),
])
def test_invalid_is_clear_error(rt, make):
    with pytest.raises(TemperanceError, match="invalid|choices"):
        generate_text(rt, [[1, 5]], SamplingParams(temperature=0), max_tokens=3, constraint=make())


def test_emptied_row_names_row_and_constraint(rt):
    with pytest.raises(TemperanceError, match=r"row 0 .*min_tokens"):
        generate_text(rt, [[1, 5]], SamplingParams(temperature=0), max_tokens=8, min_tokens=5,
                      constraint=C.regex("ab"))


def test_per_prompt_constraints(rt):
    out = generate_text(rt, [[1, 5], [1, 6]], SamplingParams(temperature=0), max_tokens=10,
                        constraint=[C.regex("yes|no"), None])
    assert out[0][0].text in ("yes", "no")


def test_from_args(tmp_path):
    f = tmp_path / "g.gbnf"
    f.write_text('root ::= "a"\n')
    assert C.from_args(grammar_file=str(f)).kind == "gbnf"
    assert C.from_args(choices_text="a, b").kind == "choice"
    assert C.from_args() is None
    with pytest.raises(TemperanceError, match="at most one"):
        C.from_args(regex_text="a", choices_text="a")


SCHEMAS = [
    {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                      "age": {"type": "integer", "minimum": 0, "maximum": 120}},
     "required": ["name", "age"], "additionalProperties": False},
    {"type": "object", "properties": {"colors": {"type": "array", "items": {"enum": ["red", "green", "blue"]},
                                                 "minItems": 1, "maxItems": 3},
                                      "ok": {"type": "boolean"}},
     "required": ["colors", "ok"], "additionalProperties": False},
    {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 9}, "minItems": 2, "maxItems": 4},
]


@pytest.mark.slow
@pytest.mark.parametrize("schema", SCHEMAS)
def test_json_schema_outputs_validate_smollm2(schema):
    jsonschema = pytest.importorskip("jsonschema")
    rt = smollm2_runtime()
    out = generate_text(rt, ["Reply with JSON."], [SamplingParams(temperature=0.8, seed=11)], n=2,
                        max_tokens=48, chat=True, constraint=C.json_schema(schema))
    for c in out[0]:
        assert c.finish_reason == "stop", c.text
        jsonschema.validate(json.loads(c.text), schema)

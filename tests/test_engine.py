"""The step-wise engine: rows joining and leaving a running batch, rewinds without prefill, beams
with stop strings and grammars, the playground's choice, and devices (tiny random Llama, offline)."""

from __future__ import annotations

import json
import os
import re

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from conftest_runtime_helpers import hf_tokenizer, tiny_llama
from temperance import SamplingParams, TemperanceError
from temperance.engine import Engine, Request
from temperance.generate import generate_text
from temperance.runtime.hf import HFRuntime
from temperance.search import BeamSettings, beam_search

torch.set_num_threads(1)
GREEDY = SamplingParams(temperature=0)


@pytest.fixture(scope="module")
def model():
    return tiny_llama()


@pytest.fixture()
def rt(model):
    return HFRuntime(model, hf_tokenizer())


class Spy(HFRuntime):
    """An HFRuntime that records how its cache was built."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.calls: list[tuple[str, object]] = []

    def prefill(self, prompts):
        if not getattr(self, "_joining", False):  # (join prefills its new rows on their own)
            self.calls.append(("prefill", len(prompts)))
        return super().prefill(prompts)

    def join(self, prompts):
        self.calls.append(("join", len(prompts)))
        self._joining = True
        try:
            return super().join(prompts)
        finally:
            self._joining = False

    def truncate(self, drop):
        self.calls.append(("truncate", torch.as_tensor(drop).tolist()))
        return super().truncate(drop)


def run(engine, *, until=None):
    """Step the engine to the end (or `until` steps); collect tokens per (request, sample)."""
    out: dict[tuple[int, int], list[int]] = {}
    n = 0
    while engine.has_work() and (until is None or n < until):
        for e in engine.step():
            out.setdefault((e.request, e.sample), []).append(e.token)
        n += 1
    return out


# -- rows join a running batch -------------------------------------------------------------------

JOINERS = [  # (prompt, params, n, max_tokens, stop)
    ([1, 40, 41, 42, 43, 44, 45], SamplingParams(temperature=1.0, top_k=40, seed=1), 1, 14, ()),
    ([1, 60], SamplingParams(temperature=1.3, min_p=0.05, seed=2, samplers="vllm"), 2, 9, ()),
    ([1, 70, 71, 72, 73, 74, 75, 76, 77, 78, 79], SamplingParams(mirostat=2, seed=3), 1, 10, ()),
    ([1, 90, 91], SamplingParams(temperature=0.8, repetition_penalty=1.3, seed=4), 1, 6, ("e",)),
]


def test_rows_joining_mid_run_equal_each_request_alone(model):
    rt = Spy(model, hf_tokenizer())
    eng = Engine(rt)
    got: dict[tuple[int, int], list[int]] = {}
    widths = []
    for k, (p, params, n, mt, stop) in enumerate(JOINERS):  # one more request every 3 steps
        eng.add(Request(p, params, n=n, max_tokens=mt, stop=stop))
        for key, toks in run(eng, until=3).items():
            got.setdefault(key, []).extend(toks)
        widths.append(rt.rows)
    for key, toks in run(eng).items():
        got.setdefault(key, []).extend(toks)
    assert [c[0] for c in rt.calls] == ["prefill", "join", "join", "join"]  # no batch restarted
    assert max(widths) >= 4, widths  # they really ran together
    for r, (p, params, n, mt, stop) in enumerate(JOINERS):
        alone = generate_text(HFRuntime(model, hf_tokenizer()), [p], params, n=n, max_tokens=mt, stop=stop)[0]
        for s in range(n):
            assert got[(r, s)] == alone[s].tokens, (r, s)


def test_abort_frees_the_rows_at_the_next_step(rt):
    eng = Engine(rt)
    a = eng.add(Request([1, 40, 41], SamplingParams(temperature=1.0, seed=1), n=3, max_tokens=50))
    b = eng.add(Request([1, 60], SamplingParams(temperature=1.0, seed=2), max_tokens=50))
    eng.step(), eng.step()
    assert rt.rows == 4
    eng.abort(a)
    events = eng.step()
    assert rt.rows == 1 and len(eng.rows) == 1 and len(eng.batch) == 1
    assert {e.request for e in events} == {b}
    eng.abort(b)
    assert eng.step() == [] and rt.rows == 0 and not eng.has_work()


def test_max_rows_makes_a_request_wait(rt):
    eng = Engine(rt, max_rows=2)
    eng.add(Request([1, 40], GREEDY, n=2, max_tokens=3))
    late = eng.add(Request([1, 50], GREEDY, max_tokens=2))
    first = eng.step()
    assert rt.rows == 2 and {e.request for e in first} == {0}
    out = run(eng)
    assert len(out[(late, 0)]) == 2


# -- phrase-ban rewinds drop cache entries, no prefill -------------------------------------------

def test_phrase_ban_rewind_calls_no_prefill(model):
    prompt, other = [1, 40, 41, 42], [1, 60, 61]
    base = generate_text(HFRuntime(model, hf_tokenizer()), [prompt], GREEDY, max_tokens=30)[0][0].text
    phrase = base[8:12]
    from temperance.antislop import PhraseBans
    rt = Spy(model, hf_tokenizer())
    eng = Engine(rt)
    eng.add(Request(prompt, GREEDY, max_tokens=30, ban_phrases=PhraseBans([phrase])))
    eng.add(Request(other, GREEDY, max_tokens=30))
    out = run(eng)
    kinds = [c[0] for c in rt.calls]
    assert kinds.count("prefill") == 1 and "join" not in kinds         # only the first prefill
    drops = [c[1] for c in rt.calls if c[0] == "truncate"]
    assert drops and all(d[0] > 0 for d in drops)                     # the banned row rewound
    assert all(len(d) == 1 or d[1] == 0 for d in drops)                # the other row never did
    # and the text is what the old re-prefilling loop gave: each request alone
    fresh = HFRuntime(model, hf_tokenizer())
    assert out[(0, 0)] == generate_text(fresh, [prompt], GREEDY, max_tokens=30, ban_phrases=[phrase])[0][0].tokens
    assert out[(1, 0)] == generate_text(fresh, [other], GREEDY, max_tokens=30)[0][0].tokens
    text = hf_tokenizer().decode(out[(0, 0)])
    assert phrase.lower() not in text.lower()


# -- beams through the engine --------------------------------------------------------------------

def test_beam_search_honours_stop_strings():
    rt = HFRuntime(tiny_llama(vocab_size=97), hf_tokenizer())  # printable ASCII: one char a token
    s = BeamSettings(beams=3, num_return_sequences=3, length_penalty=0.0)
    free = beam_search(rt, [[1, 40, 50]], s, max_tokens=20, min_tokens=20)[0]
    stop = free[0].text[5:7]
    res = beam_search(rt, [[1, 40, 50]], s, max_tokens=20, min_tokens=20, stop=[stop])[0]
    assert any(h.finish_reason == "stop" for h in res)
    for h in res:
        full = hf_tokenizer().decode(h.tokens)
        assert stop not in h.text
        if h.finish_reason == "stop":
            assert full.endswith(stop) and h.text == full[: full.find(stop)]  # ended by the stop
        else:
            assert stop not in full


def test_beam_search_min_tokens(rt):
    long = beam_search(rt, [[1, 40]], BeamSettings(beams=2), max_tokens=12, min_tokens=12)[0]
    assert all(len(h.tokens) == 12 and 2 not in h.tokens for h in long)


def test_beam_search_with_a_json_schema_validates():
    pytest.importorskip("llguidance")
    from temperance import constrain as C
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}
    rt = HFRuntime(tiny_llama(), hf_tokenizer())
    s = BeamSettings(beams=3, num_return_sequences=3)
    free = beam_search(rt, [[1, 40, 41]], s, max_tokens=20)[0]
    assert not any(_valid(h.text, schema) for h in free)        # the grammar is what makes it pass
    res = beam_search(rt, [[1, 40, 41]], s, max_tokens=20, constraint=C.json_schema(schema))[0]
    assert len(res) == 3
    for h in res:
        assert h.finish_reason == "stop" and _valid(h.text, schema), h.text


def _valid(text: str, schema: dict) -> bool:
    try:
        doc = json.loads(text)
    except ValueError:
        return False
    try:
        import jsonschema
    except ImportError:  # structural check
        return isinstance(doc, dict) and set(doc) == {"ok"} and isinstance(doc["ok"], bool)
    return jsonschema.Draft202012Validator(schema).is_valid(doc)


def test_impossible_combinations_name_both(rt):
    for kw, words in [(dict(n=2), ("n=2", "beam")), (dict(ban_phrases=_bans()), ("ban_phrases", "beam")),
                      (dict(params=SamplingParams(top_k=5, seed=0)), ("top_k", "beam"))]:
        with pytest.raises(TemperanceError) as e:
            Engine(rt).add(Request([1, 2], kw.pop("params", SamplingParams(seed=0)),
                                   strategy=BeamSettings(beams=2), **kw))
        assert all(w in str(e.value) for w in words), str(e.value)


def _bans():
    from temperance.antislop import PhraseBans
    return PhraseBans(["x"])


def test_beams_and_sampling_share_one_batch(model):
    rt = Spy(model, hf_tokenizer())
    eng = Engine(rt)
    eng.add(Request([1, 40, 41], SamplingParams(temperature=1.0, seed=5), max_tokens=8))
    beam = Request([1, 60, 61, 62], SamplingParams(seed=0), max_tokens=8, strategy=BeamSettings(beams=3))
    eng.add(beam)
    out = run(eng)
    fresh = HFRuntime(model, hf_tokenizer())
    assert out[(0, 0)] == generate_text(fresh, [[1, 40, 41]], SamplingParams(temperature=1.0, seed=5),
                                        max_tokens=8)[0][0].tokens
    alone = beam_search(fresh, [[1, 60, 61, 62]], BeamSettings(beams=3), max_tokens=8)[0]
    assert out[(beam.id, 0)] == alone[0].tokens == beam.search.result[0].tokens


# -- the playground's choice ---------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(6))
def test_playground_chosen_token_is_generates_first_token(rt, seed):
    from temperance.server import _inspect
    ids = [1, 40, 41, 42]
    p = SamplingParams(temperature=1.8, min_p=0.01, seed=seed)
    d = _inspect(rt, rt.tokenizer.token_texts(), ids, p, 5)
    first = generate_text(rt, [ids], p, max_tokens=1)[0][0].tokens[0]
    assert d["chosen"]["id"] == first


# -- devices -------------------------------------------------------------------------------------

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device here: the engine's tensors follow the "
                                          "logits' device by construction, unverified on a GPU"))]


@pytest.mark.parametrize("device", DEVICES)
def test_engine_on_device(device):
    """Penalties, logit bias, XTC, mirostat, beams and a rewind on the model's device; greedy rows
    must equal the CPU run."""
    m = tiny_llama().to(device)
    rt = HFRuntime(m, hf_tokenizer())
    assert rt.device.type == device
    knobs = [SamplingParams(temperature=0, repetition_penalty=1.3, logit_bias={5: -2.0}, seed=1),
             SamplingParams(temperature=1.0, xtc_probability=0.5, xtc_threshold=0.05, seed=2),
             SamplingParams(mirostat=2, seed=3)]
    out = generate_text(rt, [[1, 40, 41]] * 3, knobs, max_tokens=8, ban_phrases=["ab"])
    hyps = beam_search(rt, [[1, 40, 41]], BeamSettings(beams=2), max_tokens=6)[0]
    cpu = HFRuntime(tiny_llama(), hf_tokenizer())
    assert out[0][0].tokens == generate_text(cpu, [[1, 40, 41]], knobs[0], max_tokens=8,
                                             ban_phrases=["ab"])[0][0].tokens
    assert hyps[0].tokens == beam_search(cpu, [[1, 40, 41]], BeamSettings(beams=2), max_tokens=6)[0][0].tokens
    assert all(len(c[0].tokens) >= 1 for c in out)

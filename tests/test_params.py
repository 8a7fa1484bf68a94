"""SamplingParams: validation messages, JSON round trip, unknown keys, sampler orders."""

from __future__ import annotations

import json
import math

import pytest

from temperance import PRESETS, SAMPLERS, SamplingParams, TemperanceError
from temperance.params import KNOBS, parse_samplers

INF = math.inf


@pytest.mark.parametrize("kwargs, message", [
    (dict(top_p=1.5), "top_p must be in [0, 1] (1 = off), got 1.5"),
    (dict(top_p=-0.1), "top_p must be in [0, 1] (1 = off), got -0.1"),
    (dict(top_p=math.nan), "top_p must be in [0, 1] (1 = off), got nan"),
    (dict(temperature=-0.5), "temperature must be in [0, 1e30] (0 = greedy; below 1e-5 too), got -0.5"),
    (dict(temperature=INF), "temperature must be in [0, 1e30] (0 = greedy; below 1e-5 too), got inf"),
    (dict(temperature=1e31), "temperature must be in [0, 1e30] (0 = greedy; below 1e-5 too), got 1e+31"),
    (dict(smoothing_factor=1e308), "smoothing_factor must be in [0, 1e30] (0 = off), got 1e+308"),
    (dict(repetition_penalty=1e39), "repetition_penalty must be in (0, 1e30] (1 = off), got 1e+39"),
    (dict(frequency_penalty=1e39), "frequency_penalty must be in [-1e30, 1e30] (0 = off), got 1e+39"),
    (dict(min_p=1.01), "min_p must be in [0, 1] (0 = off), got 1.01"),
    (dict(typical_p=0), "typical_p must be in (0, 1] (1 = off), got 0.0"),
    (dict(tfs_z=-0.1), "tfs_z must be in [0, 1] (1 = off), got -0.1"),
    (dict(top_a=2), "top_a must be in [0, 1] (0 = off), got 2.0"),
    (dict(epsilon_cutoff=1), "epsilon_cutoff must be in [0, 1) (0 = off), got 1.0"),
    (dict(eta_cutoff=-1e-3), "eta_cutoff must be in [0, 1) (0 = off), got -0.001"),
    (dict(xtc_probability=1.5), "xtc_probability must be in [0, 1] (0 = off), got 1.5"),
    (dict(xtc_threshold=-0.1), "xtc_threshold must be in [0, 1] (> 0.5 = off), got -0.1"),
    (dict(repetition_penalty=0), "repetition_penalty must be in (0, 1e30] (1 = off), got 0.0"),
    (dict(frequency_penalty=INF), "frequency_penalty must be in [-1e30, 1e30] (0 = off), got inf"),
    (dict(presence_penalty=-INF), "presence_penalty must be in [-1e30, 1e30] (0 = off), got -inf"),
    (dict(top_n_sigma=math.nan), "top_n_sigma must be in finite reals (<= 0 = off), got nan"),
    (dict(smoothing_curve=0.5), "smoothing_curve must be in [1, 3], got 0.5"),
    (dict(smoothing_factor=-1), "smoothing_factor must be in [0, 1e30] (0 = off), got -1.0"),
    (dict(dynatemp_range=-1), "dynatemp_range must be in [0, 1e30] (0 = off), got -1.0"),
    (dict(dynatemp_exponent=-2), "dynatemp_exponent must be in [0, 1e30], got -2.0"),
    (dict(dry_base=0.5), "dry_base must be in [1, 1e30], got 0.5"),
    (dict(dry_multiplier=-0.8), "dry_multiplier must be in [0, 1e30] (0 = off), got -0.8"),
    (dict(mirostat_tau=-1), "mirostat_tau must be in [0, 1e30], got -1.0"),
    (dict(mirostat_eta=INF), "mirostat_eta must be in [0, 1e30], got inf"),
    # integer knobs
    (dict(top_k=-1), "top_k must be in integers >= 0 (0 = off), got -1"),
    (dict(top_k=1.5), "top_k must be an integer in integers >= 0 (0 = off), got 1.5"),
    (dict(penalty_last_n=-2), "penalty_last_n must be in integers >= -1 (-1 = whole context, 0 = off), got -2"),
    (dict(dry_allowed_length=-1), "dry_allowed_length must be in integers >= 0 (0 = any repeat), got -1"),
    (dict(dry_penalty_last_n=-5), "dry_penalty_last_n must be in integers >= -1 (-1 = whole context, 0 = off), got -5"),
    (dict(no_repeat_ngram_size=-1), "no_repeat_ngram_size must be in integers >= 0 (0 = off), got -1"),
    (dict(mirostat=3), "mirostat must be in {0, 1, 2} (0 = off), got 3"),
    # wrong types
    (dict(top_p="0.9"), "top_p must be a number in [0, 1] (1 = off), got '0.9'"),
    (dict(temperature=True), "temperature must be a number in [0, 1e30] (0 = greedy; below 1e-5 too), got True"),
    (dict(top_k=None), "top_k must be a number in integers >= 0 (0 = off), got None"),
])
def test_validation_messages_are_exact(kwargs, message):
    with pytest.raises(TemperanceError) as e:
        SamplingParams(**kwargs)
    assert str(e.value) == message
    assert isinstance(e.value, ValueError)  # TemperanceError is a ValueError


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(seed=-1), "seed must be an integer in [0, 2^63) or None, got -1"),
    (dict(seed=2**63), "seed must be an integer in [0, 2^63) or None, got 9223372036854775808"),
    (dict(seed=1.0), "seed must be an integer in [0, 2^63) or None, got 1.0"),
    (dict(seed=True), "seed must be an integer in [0, 2^63) or None, got True"),
    (dict(logit_bias={-1: 1.0}), "logit_bias keys must be token ids (integers >= 0), got -1"),
    (dict(logit_bias={"x": 1.0}), "logit_bias keys must be token ids (integers >= 0), got 'x'"),
    (dict(logit_bias={1.5: 1.0}), "logit_bias keys must be token ids (integers >= 0), got 1.5"),
    (dict(logit_bias={3: INF}), "logit_bias[3] must be in [-1e30, 1e30] or -inf (ban), got inf"),
    (dict(logit_bias={3: math.nan}), "logit_bias[3] must be in [-1e30, 1e30] or -inf (ban), got nan"),
    (dict(logit_bias={41: 1e39}), "logit_bias[41] must be in [-1e30, 1e30] or -inf (ban), got 1e+39"),
    (dict(logit_bias=[1, 2]), "logit_bias must be a mapping token id -> bias, got [1, 2]"),
    (dict(dry_sequence_breakers="\n"), "dry_sequence_breakers must be a list of non-empty strings"),
    (dict(dry_sequence_breakers=["a", ""]), "dry_sequence_breakers must be a list of non-empty strings"),
])
def test_other_field_messages(kwargs, fragment):
    with pytest.raises(TemperanceError) as e:
        SamplingParams(**kwargs)
    assert str(e.value).startswith(fragment)


def test_boundaries_are_valid_and_integer_floats_are_coerced():
    p = SamplingParams(top_p=1.0, min_p=1.0, typical_p=1e-9, tfs_z=0.0, top_a=1.0, xtc_threshold=1.0,
                       temperature=0.0, smoothing_curve=3.0, top_k=2.0, penalty_last_n=-1,
                       dry_penalty_last_n=-1.0, seed=2**63 - 1, mirostat_tau=0.0)
    assert p.top_k == 2 and isinstance(p.top_k, int)
    assert p.dry_penalty_last_n == -1 and isinstance(p.dry_penalty_last_n, int)
    assert isinstance(p.temperature, float) and p.greedy
    assert SamplingParams(temperature=100).temperature == 100.0  # no upper cap


def test_defaults_are_neutral():
    p = SamplingParams()
    for name, knob in KNOBS.items():
        assert getattr(p, name) == knob.neutral, name
    assert not any(p.active(s) for s in SAMPLERS)
    assert p.samplers == SAMPLERS
    assert p.dry_sequence_breakers == ("\n", ":", '"', "*")
    assert p.logit_bias == {} and p.seed is None


def _rich_params() -> SamplingParams:
    return SamplingParams(
        temperature=0.7, dynatemp_range=0.3, dynatemp_exponent=1.5, smoothing_factor=0.2,
        smoothing_curve=2.0, top_k=40, top_p=0.9, min_p=0.05, top_n_sigma=1.0, typical_p=0.95,
        tfs_z=0.97, top_a=0.1, epsilon_cutoff=3e-4, eta_cutoff=4e-3, xtc_probability=0.5,
        xtc_threshold=0.15, repetition_penalty=1.1, frequency_penalty=0.2, presence_penalty=-0.1,
        penalty_last_n=-1, dry_multiplier=0.8, dry_base=1.75, dry_allowed_length=3,
        dry_penalty_last_n=256, dry_sequence_breakers=["\n", "###"], no_repeat_ngram_size=4,
        logit_bias={5: 2.5, 17: -math.inf, 0: -1.0}, seed=2**63 - 1)


@pytest.mark.parametrize("params", [
    SamplingParams(),
    _rich_params(),
    SamplingParams(mirostat=2, mirostat_tau=3.0, mirostat_eta=0.2, temperature=0.8,
                   repetition_penalty=1.2, logit_bias={1: 1.0}, seed=9),
    SamplingParams(samplers="vllm", temperature=0.5, top_p=0.9, top_k=5),
    SamplingParams(samplers=["min_p", "temp"], min_p=0.1, temperature=3.0),
])
def test_json_round_trip(params):
    d = params.to_dict()
    assert list(d["logit_bias"]) == [str(k) for k in params.logit_bias]  # JSON object keys
    assert isinstance(d["samplers"], list) and isinstance(d["dry_sequence_breakers"], list)
    text = json.dumps(d)
    back = SamplingParams.from_dict(json.loads(text))
    assert back == params
    assert back.logit_bias == params.logit_bias
    assert all(isinstance(k, int) for k in back.logit_bias)
    assert back.samplers == params.samplers and back.chain == params.chain
    assert json.loads(json.dumps(back.to_dict())) == json.loads(text)


def test_from_dict_accepts_string_keys_and_partial_dicts():
    p = SamplingParams.from_dict({"logit_bias": {"3": -2, "10": -math.inf},
                                  "top_k": 5, "samplers": "bias,top_k,temperature"})
    assert p.logit_bias == {3: -2.0, 10: -math.inf}
    assert p.samplers == ("logit_bias", "top_k", "temperature") and p.top_k == 5
    assert p.temperature == 1.0


def test_unknown_keys_are_rejected_by_name():
    with pytest.raises(TemperanceError) as e:
        SamplingParams.from_dict({"top_p": 0.9, "top_q": 1, "temprature": 0.5})
    msg = str(e.value)
    assert msg.startswith("unknown sampling parameter(s) 'temprature', 'top_q'; valid: ")
    assert "top_p" in msg.split("valid: ")[1]
    with pytest.raises(TypeError):
        SamplingParams(top_q=1)  # the constructor itself is a dataclass


def test_invalid_value_through_from_dict_names_knob():
    with pytest.raises(TemperanceError, match=r"^min_p must be in \[0, 1\] \(0 = off\), got 2.0$"):
        SamplingParams.from_dict({"min_p": 2})


# -- sampler orders -----------------------------------------------------------------------------

def test_samplers_as_list_string_preset_and_aliases():
    assert SamplingParams(samplers=["top_k", "temperature"]).samplers == ("top_k", "temperature")
    assert SamplingParams(samplers="top_k,temperature").samplers == ("top_k", "temperature")
    assert SamplingParams(samplers="top_k; temperature").samplers == ("top_k", "temperature")
    assert SamplingParams(samplers="top_k temperature").samplers == ("top_k", "temperature")
    assert SamplingParams(samplers=" Top-K , TEMP ").samplers == ("top_k", "temperature")
    assert SamplingParams(samplers="vllm").samplers == PRESETS["vllm"]
    assert SamplingParams(samplers="VLLM").samplers == PRESETS["vllm"]
    assert SamplingParams(samplers="openai").samplers == PRESETS["vllm"]
    assert SamplingParams(samplers="hf").samplers == PRESETS["hf"]
    assert SamplingParams(samplers="llama.cpp").samplers == SAMPLERS


@pytest.mark.parametrize("alias, name", [
    ("temp", "temperature"), ("typical", "typical_p"), ("typ_p", "typical_p"),
    ("nucleus", "top_p"), ("tail_free", "tfs"), ("tfs_z", "tfs"), ("epsilon_cutoff", "epsilon"),
    ("eta_cutoff", "eta"), ("repetition_penalty", "penalties"), ("repeat_penalty", "penalties"),
    ("penalty", "penalties"), ("top_nsigma", "top_n_sigma"), ("top-n-sigma", "top_n_sigma"),
    ("bias", "logit_bias"), ("no_repeat_ngram_size", "no_repeat_ngram"), ("top-p", "top_p"),
    ("nsigma", "top_n_sigma"),
])
def test_each_alias_resolves(alias, name):
    assert parse_samplers([alias]) == (name,)
    assert parse_samplers(alias) == (name,)


@pytest.mark.parametrize("value, fragment", [
    ("top_k,foo", "unknown sampler 'foo' in samplers; valid names: logit_bias, penalties"),
    (["top_k", "top_k"], "sampler 'top_k' appears twice in samplers"),
    ("top-k,top_k", "sampler 'top_k' appears twice in samplers"),
    ("temp,temperature", "sampler 'temperature' appears twice in samplers"),
    ("", "samplers must name at least one sampler (or a preset), got none"),
    ([], "samplers must name at least one sampler (or a preset), got none"),
    ([1], "samplers must be names (strings), got 1"),
    ("mirostat", "unknown sampler 'mirostat'"),
])
def test_bad_orders(value, fragment):
    with pytest.raises(TemperanceError) as e:
        SamplingParams(samplers=value)
    assert str(e.value).startswith(fragment)


def test_knob_without_its_stage_is_an_error():
    with pytest.raises(TemperanceError) as e:
        SamplingParams(top_p=0.5, samplers="top_k,temperature")
    assert str(e.value) == ("top_p=0.5 is set but the sampler order has no 'top_p' stage "
                            "(samplers: top_k,temperature); add 'top_p' to samplers")
    with pytest.raises(TemperanceError, match="typical_p=0.5 is set"):
        SamplingParams(samplers="vllm", typical_p=0.5)
    with pytest.raises(TemperanceError, match="dry_multiplier=0.8 is set"):
        SamplingParams(samplers="hf", dry_multiplier=0.8)
    with pytest.raises(TemperanceError, match="temperature=0.5 is set"):
        SamplingParams(samplers="top_k", temperature=0.5)
    # T = 0 (greedy) is the temperature stage's point mass: it needs the stage like any other T
    with pytest.raises(TemperanceError, match="temperature=0.0 is set"):
        SamplingParams(samplers="top_k", top_k=3, temperature=0.0)
    # neutral knobs need no stage
    SamplingParams(samplers="top_k", top_p=1.0, min_p=0.0)


def test_mirostat_replaces_truncation():
    p = SamplingParams(mirostat=2, temperature=0.7, repetition_penalty=1.1)
    assert p.chain == ("logit_bias", "penalties", "temperature", "mirostat")
    assert SamplingParams(mirostat=1, samplers="vllm").chain == (
        "logit_bias", "penalties", "temperature", "mirostat")
    for kw in [dict(top_k=3), dict(top_p=0.9), dict(min_p=0.1), dict(xtc_probability=0.5),
               dict(dry_multiplier=0.8), dict(typical_p=0.5), dict(no_repeat_ngram_size=2)]:
        with pytest.raises(TemperanceError) as e:
            SamplingParams(mirostat=2, **kw)
        (name, value), = kw.items()
        assert str(e.value).startswith(f"{name}={value!r} has no effect with mirostat=2")


def test_presets_pinned():
    assert PRESETS["vllm"] == ("logit_bias", "penalties", "temperature", "top_k", "top_p", "min_p")
    assert PRESETS["openai"] == PRESETS["vllm"]
    assert PRESETS["hf"] == ("logit_bias", "penalties", "no_repeat_ngram", "temperature", "top_k",
                             "top_p", "min_p", "typical_p", "epsilon", "eta")
    assert PRESETS["llama.cpp"] == SAMPLERS

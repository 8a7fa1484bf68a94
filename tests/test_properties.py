"""Property tests (hypothesis): random logits (±inf, NaN, huge, tiny, V = 1, flat rows) and random
valid knobs through Chain and chain.candidates: a valid result or a TemperanceError, never any other
exception. Invalid knobs: a TemperanceError naming the knob and the value.

Extreme knob values (a temperature of 1e-300, ...) have their own tests at the bottom; the
strategies keep knobs in everyday ranges so that the examples explore the logits.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from temperance import SAMPLERS, Batch, Chain, SamplingParams, TemperanceError, ops, pick
from temperance.params import KNOBS

INF = math.inf
SETTINGS = settings(max_examples=80, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

SPECIAL = [0.0, -0.0, 1.0, -1.0, 3.0, 1e30, -1e30, 1e-30, -1e-30, 3e38, -3e38, -INF]
finite32 = st.floats(-40, 40, width=32, allow_nan=False, allow_infinity=False)
cell = st.one_of(finite32, finite32, st.sampled_from(SPECIAL))


@st.composite
def logits_st(draw, B=None):
    B = B or draw(st.integers(1, 3))
    V = draw(st.sampled_from([1, 2, 3, 5, 8, 13]))
    style = draw(st.sampled_from(["cells", "flat", "ties", "random"]))
    if style == "cells":
        x = torch.tensor(draw(st.lists(st.lists(cell, min_size=V, max_size=V), min_size=B, max_size=B)),
                         dtype=torch.float32)
    elif style == "flat":
        x = torch.full((B, V), draw(cell))
    else:
        g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
        x = torch.randn(B, V, generator=g) * draw(st.sampled_from([0.1, 1.0, 5.0, 1e30]))
        if style == "ties":
            x = torch.round(x)
    # the illegal values: NaN or +inf somewhere, or a row with no finite entry
    poison = draw(st.sampled_from([None] * 6 + ["nan", "+inf", "empty"]))
    if poison:
        r, c = draw(st.integers(0, B - 1)), draw(st.integers(0, V - 1))
        if poison == "nan":
            x[r, c] = math.nan
        elif poison == "+inf":
            x[r, c] = INF
        else:
            x[r] = -INF
    return x


def _knob(name, strategy):
    return st.one_of(st.none(), strategy).map(lambda v: (name, v))


# valid values in everyday ranges (the extreme ones are tested at the bottom)
KNOB_ST = [
    _knob("temperature", st.one_of(st.just(0.0), st.floats(0.05, 100))),
    _knob("dynatemp_range", st.floats(0, 5)),
    _knob("dynatemp_exponent", st.floats(0, 4)),
    _knob("smoothing_factor", st.floats(0, 10)),
    _knob("smoothing_curve", st.floats(1, 3)),
    _knob("top_k", st.integers(0, 20)),
    _knob("top_p", st.floats(1e-6, 1)),
    _knob("min_p", st.floats(0, 1)),
    _knob("top_n_sigma", st.floats(-2, 5)),
    _knob("typical_p", st.floats(1e-6, 1)),
    _knob("tfs_z", st.floats(0, 1)),
    _knob("top_a", st.floats(0, 1)),
    _knob("epsilon_cutoff", st.floats(0, 0.999)),
    _knob("eta_cutoff", st.floats(0, 0.999)),
    _knob("xtc_probability", st.floats(0, 1)),
    _knob("xtc_threshold", st.floats(0, 1)),
    _knob("repetition_penalty", st.floats(0.05, 20)),
    _knob("frequency_penalty", st.floats(-5, 5)),
    _knob("presence_penalty", st.floats(-5, 5)),
    _knob("penalty_last_n", st.integers(-1, 20)),
    _knob("dry_multiplier", st.floats(0, 5)),
    _knob("dry_base", st.floats(1, 4)),
    _knob("dry_allowed_length", st.integers(1, 4)),
    _knob("dry_penalty_last_n", st.integers(-1, 20)),
    _knob("no_repeat_ngram_size", st.integers(0, 4)),
]
MIRO_OK = {"temperature", "repetition_penalty", "frequency_penalty", "presence_penalty", "penalty_last_n"}


@st.composite
def row_params(draw, V, mirostat, order):
    kw = {k: v for k, v in draw(st.tuples(*KNOB_ST)) if v is not None}
    if draw(st.booleans()):
        kw["logit_bias"] = draw(st.dictionaries(
            st.integers(0, V - 1), st.sampled_from([-INF, -5.0, 2.0, 50.0, 1e30]), max_size=3))
    kw["dry_sequence_breakers"] = []
    if mirostat:
        kw = {k: v for k, v in kw.items() if k in MIRO_OK or k in ("logit_bias", "dry_sequence_breakers")}
        kw.update(mirostat=mirostat, mirostat_tau=draw(st.floats(0, 10)), mirostat_eta=draw(st.floats(0, 2)))
    return SamplingParams(**kw, samplers=order, seed=draw(st.integers(0, 2**63 - 1)))


@st.composite
def case_st(draw):
    x = draw(logits_st())
    B, V = x.shape
    mirostat = draw(st.sampled_from([0, 0, 0, 0, 1, 2]))
    order = draw(st.one_of(st.just("llama.cpp"), st.permutations(SAMPLERS).map(list)))
    params = [draw(row_params(V, mirostat, order)) for _ in range(B)]
    history = [draw(st.lists(st.integers(0, V - 1), max_size=12)) for _ in range(B)]
    breakers = [draw(st.lists(st.lists(st.integers(0, V - 1), min_size=1, max_size=2), max_size=2))
                for _ in range(B)]
    return x, Batch(params, history=history, dry_breakers=breakers, step=draw(st.integers(0, 1000)))


def _run(f):
    try:
        return f()
    except TemperanceError as e:
        return e


def _illegal(x: torch.Tensor) -> bool:
    return bool(torch.isnan(x).any() or (x == INF).any() or (~torch.isfinite(x)).all(-1).any())


@SETTINGS
@given(case_st())
def test_chain_and_candidates_valid_or_temperance_error(case):
    x, batch = case
    before = x.clone()
    chain = Chain.for_batch(batch)
    dense = _run(lambda: chain(x, batch))
    cand = _run(lambda: chain.candidates(x, batch).dense())
    picked = _run(lambda: Chain.for_batch(batch).sample(x, batch))
    assert torch.equal(x, before) or _illegal(before)  # (NaN != NaN: compare only legal inputs)
    if _illegal(x):
        for r in (dense, cand, picked):
            assert isinstance(r, TemperanceError) and "row " in str(r)
        return
    if isinstance(dense, TemperanceError):
        event("TemperanceError: " + str(dense).split(":")[-1][:40])
        assert isinstance(cand, TemperanceError) and isinstance(picked, TemperanceError)
        return
    assert not isinstance(cand, TemperanceError), cand
    assert not isinstance(picked, TemperanceError), picked
    B, V = x.shape
    for out in (dense, cand):
        assert out.shape == (B, V) and out.dtype == torch.float32
        assert not torch.isnan(out).any()
        assert not (out == INF).any()
        assert torch.isfinite(out).any(-1).all()
    assert torch.equal(torch.isfinite(dense), torch.isfinite(cand))
    if any(p.dynatemp_range > 0 for p in batch.params):  # entropy summed over another width: ulps
        torch.testing.assert_close(cand, dense, rtol=1e-5, atol=1e-6)
    else:
        assert torch.equal(cand, dense)
    t = picked.tokens
    assert t.shape == (B,) and bool(((t >= 0) & (t < V)).all())
    assert bool(torch.isfinite(dense.gather(1, t.view(-1, 1))).all())  # drawn from the survivors
    assert bool(torch.isfinite(picked.logprob).all()) and bool((picked.logprob <= 1e-6).all())


@SETTINGS
@given(logits_st(), st.booleans())
def test_pick_valid_or_temperance_error(x, greedy):
    B, V = x.shape
    r = _run(lambda: pick(x, seed=torch.arange(B), step=torch.zeros(B, dtype=torch.int64),
                          greedy=greedy, raw_logits=x, top_n=2))
    if _illegal(x):
        assert isinstance(r, TemperanceError) and "row " in str(r)
        return
    assert not isinstance(r, TemperanceError)
    assert bool(torch.isfinite(x.gather(1, r.tokens.view(-1, 1))).all())
    if greedy:
        first_max = torch.tensor([int((row == row.max()).nonzero()[0]) for row in x])
        assert torch.equal(r.tokens, first_max)
    assert not torch.isnan(r.logprob).any() and not torch.isnan(r.raw_logprob).any()


OP_CASES = {
    "temperature": lambda d: dict(temperature=d(st.one_of(st.just(0.0), st.floats(0.05, 100)))),
    "dynatemp": lambda d: dict(temperature=d(st.floats(0, 5)), dynatemp_range=d(st.floats(0, 5)),
                               dynatemp_exponent=d(st.floats(0, 4))),
    "smoothing": lambda d: dict(smoothing_factor=d(st.floats(0, 10)), smoothing_curve=d(st.floats(1, 3))),
    "top_k": lambda d: dict(top_k=d(st.integers(0, 20))),
    "top_p": lambda d: dict(top_p=d(st.floats(1e-6, 1))),
    "min_p": lambda d: dict(min_p=d(st.floats(0, 1))),
    "top_n_sigma": lambda d: dict(top_n_sigma=d(st.floats(-1, 5))),
    "typical_p": lambda d: dict(typical_p=d(st.floats(1e-6, 1))),
    "tfs": lambda d: dict(tfs_z=d(st.floats(0, 1))),
    "top_a": lambda d: dict(top_a=d(st.floats(0, 1))),
    "epsilon": lambda d: dict(epsilon_cutoff=d(st.floats(0, 0.999))),
    "eta": lambda d: dict(eta_cutoff=d(st.floats(0, 0.999))),
    "xtc": lambda d: dict(xtc_probability=d(st.floats(0, 1)), xtc_threshold=d(st.floats(0, 1)),
                          seed=d(st.integers(0, 2**62)), step=d(st.integers(0, 99))),
    "mirostat": lambda d: dict(mu=d(st.floats(-5, 30)), mirostat=d(st.sampled_from([1, 2]))),
}


@SETTINGS
@given(st.sampled_from(sorted(OP_CASES)), st.data())
def test_ops_on_masked_huge_tiny_rows(name, data):
    x = data.draw(logits_st())
    if _illegal(x):
        x = torch.nan_to_num(x, nan=0.0, posinf=1e30)
        x[(~torch.isfinite(x)).all(-1)] = 0.0
    knobs = OP_CASES[name](data.draw)
    y = getattr(ops, name if name != "tfs" else "tfs")(x, **knobs)
    assert y.shape == x.shape
    assert not torch.isnan(y).any() and not (y == INF).any()
    assert torch.isfinite(y).any(-1).all()
    assert not torch.isfinite(y[~torch.isfinite(x)]).any()
    if name not in ("temperature", "dynatemp", "smoothing"):
        keep = torch.isfinite(y)
        assert torch.equal(y[keep], x[keep])


# -- invalid knobs ---------------------------------------------------------------------------------

def _invalid_values(name):
    k = KNOBS[name]
    cands = [math.nan, INF, -INF, -1e9, -1.5, -1, -1e-9, 0, 0.5, 1, 1.5, 3, 1e9, 2.5, "x", None, True, [1]]
    bad = []
    for v in cands:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            bad.append(v)
            continue
        if k.integer and isinstance(v, float) and not (math.isfinite(v) and v.is_integer()):
            bad.append(v)
            continue
        vv = int(v) if k.integer else float(v)
        if (isinstance(vv, float) and math.isnan(vv)) or not k.valid(vv):
            bad.append(v)
    return bad


@pytest.mark.parametrize("name", sorted(KNOBS))
def test_invalid_knobs_name_knob_and_value(name):
    bad = _invalid_values(name)
    assert bad
    for v in bad:
        with pytest.raises(TemperanceError) as e:
            SamplingParams(**{name: v})
        msg = str(e.value)
        assert msg.startswith(f"{name} must be"), msg
        shown = repr(v) if not isinstance(v, (int, float)) or isinstance(v, bool) else None
        if shown is None and KNOBS[name].integer:
            shown = repr(int(v)) if float(v).is_integer() else repr(v)
        elif shown is None:
            shown = repr(float(v))
        assert msg.endswith(f"got {shown}"), (msg, shown)


@SETTINGS
@given(st.sampled_from(["top_p", "min_p", "typical_p", "tfs_z", "top_a", "epsilon_cutoff",
                        "eta_cutoff", "temperature", "top_k", "xtc_probability"]),
       st.one_of(st.floats(-1e6, 1e6), st.sampled_from([math.nan, INF, -INF, 1e300, -1e300]),
                 st.integers(-10**6, 10**6)))
def test_ops_reject_invalid_knobs_with_the_name(name, value):
    op = {"tfs_z": ops.tfs, "epsilon_cutoff": ops.epsilon, "eta_cutoff": ops.eta,
          "xtc_probability": ops.xtc}.get(name) or getattr(ops, name)
    k = KNOBS[name]
    if k.integer and isinstance(value, float) and math.isfinite(value) and abs(value) > 2**53:
        return  # huge integer knobs: a known bug (test_huge_integer_knob_is_valid_or_a_temperance_error)
    x = torch.zeros(2, 4)
    try:
        v = int(value) if k.integer and float(value).is_integer() else value
        ok = not (isinstance(v, float) and (math.isnan(v) or (k.integer and not v.is_integer()))) \
            and k.valid(float(v) if not k.integer else v)
    except (OverflowError, ValueError):
        ok = False
    if ok:
        op(x, **{name: value})
        return
    with pytest.raises(TemperanceError) as e:
        op(x, **{name: value})
    assert name in str(e.value) and "got" in str(e.value)
    with pytest.raises(TemperanceError) as e:  # the same check for a per-row tensor
        op(x, **{name: torch.tensor([k.neutral, value], dtype=torch.float64)})
    assert name in str(e.value)


# -- float32 overflow of valid knobs (bugs) ---------------------------------------------------------

def test_tiny_temperature_does_not_produce_inf_or_nan():
    x = torch.tensor([[1.0, 0.5, -1.0, 0.0]])
    b = Batch(SamplingParams(temperature=1e-300, seed=0), size=1)
    out = Chain()(x, b)
    assert not torch.isnan(out).any() and not (out == INF).any()
    assert int(Chain().sample(x, b).tokens[0]) < 4


def test_tiny_repetition_penalty_does_not_produce_inf():
    b = Batch(SamplingParams(repetition_penalty=1e-40, seed=0), history=[[0, 1]])
    out = Chain()(torch.tensor([[1.0, 0.5, -1.0, 0.0]]), b)
    assert not (out == INF).any()


def test_huge_integer_knob_is_valid_or_a_temperance_error():
    try:
        b = Batch(SamplingParams(top_k=2**63), size=1)
        out = Chain()(torch.zeros(1, 3), b)
    except TemperanceError:
        return
    assert torch.equal(out, torch.zeros(1, 3))  # k >= V is off

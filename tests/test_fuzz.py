"""Hostile values (issue 9 §6): a clear `TemperanceError` or a valid result, never a crash, never a
NaN or +inf created from finite input.

One hypothesis fuzz over `Chain` (``__call__``, ``candidates``, ``sample``) and every public op, with
logits in float32, float16 and bfloat16 (NaN, ±inf, the dtype's largest and smallest values,
subnormals), V from 1, B from 1 to 8, odd histories, and knob values drawn from the extremes of
every range: just inside and just outside each bound, 0, -0.0, subnormals, 1e30, 1e39, 1e308, NaN,
±inf, wrong types. The example count is bounded so that the suite stays fast; a long run is
``TEMPERANCE_FUZZ_EXAMPLES=20000 pytest tests/test_fuzz.py`` (random, not derandomised, above 500).

What is asserted for every case:

* the only exception is `TemperanceError`;
* illegal logits (NaN or +inf somewhere, a row with no finite entry) are always an error;
* otherwise the output has the input's shape, no NaN and no +inf, and at least one finite entry
  per row; chosen tokens are in [0, V), finite under the processed logits, with a finite
  log-probability <= 0; the input is never mutated.
"""

from __future__ import annotations

import math
import os

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from temperance import SAMPLERS, Batch, Chain, SamplingParams, TemperanceError, ops
from temperance.ops import KNOBS, STAGES
from temperance.params import parse_samplers
from test_properties import _illegal, _run  # (the contract's helpers: one definition)

INF, NAN = math.inf, math.nan
EXAMPLES = int(os.environ.get("TEMPERANCE_FUZZ_EXAMPLES", "120"))  # ~15 s for the whole file


def _settings(n: int):
    return settings(max_examples=n, deadline=None, derandomize=n <= 500, database=None,
                    suppress_health_check=list(HealthCheck))


SETTINGS = _settings(EXAMPLES)
OP_SETTINGS = _settings(2 * EXAMPLES)  # an op is ~10x cheaper than a chain case
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _edges(x: float) -> list[float]:
    return [x, math.nextafter(x, -INF), math.nextafter(x, INF)]


# Every float knob gets values around its bounds (0, 1, 0.5, 3, 1e-5, 1e30) and the extremes.
FLOATS = sorted({v for e in (0.0, 0.5, 1.0, 3.0, 1e-5, 1e30) for v in _edges(e)} | {
    -0.0, 5e-324, 1e-320, 1e-300, 1e-45, 1e-40, 1e-38, 1e-30, 1e-6, 1e-3, 0.1, 0.9, 1.75, 2.0,
    10.0, 100.0, 1e4, 1e6, 3.4e38, 3.5e38, 1e39, 1e300, 1.7976931348623157e308,
    -1e-300, -1e-9, -0.5, -1.0, -3.0, -1e30, -1e39, -1e308})
INTS = [-2**63, -2**31, -3, -2, -1, 0, 1, 2, 3, 4, 5, 8, 13, 64, 2**31 - 1, 2**31, 2**53 + 1, 2**63]
SPECIAL_KNOBS = [NAN, INF, -INF]
WRONG_TYPES = [None, True, "1", [1]]


def _is_int_knob(name: str) -> bool:
    return bool(KNOBS[name].integer)


def knob_value(name: str):
    """Any value at all for knob `name`: mostly numbers at the extremes, sometimes nonsense."""
    if _is_int_knob(name):
        num = st.one_of(st.sampled_from(INTS), st.integers(-5, 300),
                        st.sampled_from([0.0, 1.0, 2.5, -1.0, 1e300]))
    else:
        num = st.one_of(st.sampled_from(FLOATS), st.floats(allow_nan=False, allow_infinity=False),
                        st.floats(-5, 5), st.integers(-3, 5))
    return st.one_of(num, num, num, num, st.sampled_from(SPECIAL_KNOBS + WRONG_TYPES))


def _valid(name: str, value) -> bool:
    try:
        SamplingParams(**{name: value})
        return True
    except TemperanceError:
        return False


@st.composite
def logits_st(draw, dtype=None, B=None, V=None):
    dtype = dtype or draw(st.sampled_from(DTYPES))
    B = B or draw(st.integers(1, 8))
    V = V or draw(st.sampled_from([1, 1, 2, 3, 5, 8, 13, 64, 200, 1100]))
    fi = torch.finfo(dtype)
    special = [0.0, -0.0, 1.0, -1.0, fi.max, -fi.max, fi.tiny, -fi.tiny, fi.tiny / 4, fi.max / 2,
               -fi.max / 2, 1e4, -1e4, -INF]
    style = draw(st.sampled_from(["cells", "flat", "random", "random", "huge", "ties"]))
    if style == "cells" and B * V <= 64:
        cell = st.one_of(st.floats(-50, 50), st.sampled_from(special))
        x = torch.tensor(draw(st.lists(st.lists(cell, min_size=V, max_size=V), min_size=B, max_size=B)),
                         dtype=torch.float64)
    elif style == "flat":
        x = torch.full((B, V), draw(st.sampled_from(special)), dtype=torch.float64)
    else:
        g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
        scale = {"huge": fi.max / 4}.get(style, draw(st.sampled_from([1e-30, 0.1, 1.0, 10.0, 1e4])))
        x = torch.randn(B, V, generator=g, dtype=torch.float64) * scale
        if style == "ties":
            x = torch.round(x)
        if draw(st.booleans()):  # some masked entries, some extreme ones
            x[torch.rand(B, V, generator=g) < 0.3] = -INF
            x[torch.rand(B, V, generator=g) < 0.05] = draw(st.sampled_from(special))
    x = x.clamp(-fi.max, fi.max).where(torch.isfinite(x) | torch.isnan(x), x).to(dtype)
    empty = ~torch.isfinite(x).any(-1)
    x[empty, draw(st.integers(0, V - 1))] = 0.0  # empty rows only where poisoned, below
    poison = draw(st.sampled_from([None] * 15 + ["nan", "+inf", "empty"]))
    if poison:
        r, c = draw(st.integers(0, B - 1)), draw(st.integers(0, V - 1))
        if poison == "nan":
            x[r, c] = NAN
        elif poison == "+inf":
            x[r, c] = INF
        else:
            x[r] = -INF
    return x


@st.composite
def history_st(draw, B, V, bad=False):
    rows = []
    for _ in range(B):
        kind = draw(st.sampled_from(["none", "random", "repeat", "one"] + ["bad"] * bad))
        if kind == "none":
            rows.append([])
        elif kind == "one":
            rows.append([draw(st.integers(0, V - 1))] * draw(st.integers(1, 30)))
        elif kind == "repeat":
            unit = draw(st.lists(st.integers(0, V - 1), min_size=1, max_size=4))
            rows.append((unit * 12)[: draw(st.integers(1, 40))])
        elif kind == "random":
            rows.append(draw(st.lists(st.integers(0, V - 1), max_size=25)))
        else:  # ids out of range: an error
            rows.append([draw(st.sampled_from([V, V + 5, 2**40]))])
    return rows


BIAS_VALUES = [-INF, -1e39, -1e30, -5.0, 0.0, 2.0, 1e4, 1e30, 1e39, 1e308, NAN, INF, True, "x"]


@st.composite
def params_st(draw, V, mirostat, order, bad=False):
    kw = {}
    for name in KNOBS:
        if name == "mirostat" or not draw(st.integers(0, 3)) == 0:
            continue
        v = draw(knob_value(name))
        if _valid(name, v) or bad and draw(st.integers(0, 3)) == 0:  # valid extremes; some errors
            kw[name] = v
    if draw(st.integers(0, 2)) == 0:
        ids = st.one_of(st.integers(0, max(V - 1, 0)), st.sampled_from([V, -1, 2**40]))
        vals = st.one_of(st.sampled_from(BIAS_VALUES), st.floats(-100, 100))
        bias = draw(st.dictionaries(ids, vals, max_size=4))
        kw["logit_bias"] = {k: v for k, v in bias.items()
                            if bad and draw(st.booleans()) or _valid("logit_bias", {k: v}) and k < V}
    kw["dry_sequence_breakers"] = []
    if mirostat:
        keep = {"temperature", "repetition_penalty", "frequency_penalty", "presence_penalty",
                "penalty_last_n", "logit_bias", "dry_sequence_breakers"}
        kw = {k: v for k, v in kw.items() if k in keep}
        kw.update(mirostat=mirostat, mirostat_tau=draw(knob_value("mirostat_tau")),
                  mirostat_eta=draw(knob_value("mirostat_eta")))
    if isinstance(order, str) and not bad:  # a preset: only knobs of its samplers
        names = set(parse_samplers(order)) | {"mirostat"}
        for stage in STAGES:
            if (stage.part_of or stage.name) not in names:
                for k in stage.knobs:
                    kw.pop(k.name, None)
    try:
        return SamplingParams(**kw, samplers=order, seed=draw(st.integers(0, 2**63 - 1)))
    except TemperanceError:
        if bad:
            raise
        return SamplingParams(samplers=order, seed=0)


LAST: dict = {}  # the last chain case drawn (for a debugger)


def _check_logits_out(y: torch.Tensor, x: torch.Tensor) -> None:
    assert y.shape == x.shape
    assert not torch.isnan(y).any(), "NaN created"
    assert not (y == INF).any(), "+inf created"
    assert torch.isfinite(y).any(-1).all(), "a row lost every token"


# -- the chain ------------------------------------------------------------------------------------

@st.composite
def chain_case(draw):
    x = draw(logits_st())
    B, V = x.shape
    mirostat = draw(st.sampled_from([0, 0, 0, 0, 1, 2]))
    order = draw(st.one_of(st.just("llama.cpp"), st.sampled_from(["vllm", "hf"]),
                           st.permutations(SAMPLERS).map(list)))
    bad = draw(st.integers(0, 9)) == 0  # one case in ten has an invalid knob, bias or history
    params = [draw(params_st(V, mirostat, order, bad)) for _ in range(B)]
    history = draw(history_st(B, V, bad))
    breakers = [draw(st.lists(st.lists(st.integers(0, V - 1), min_size=1, max_size=3), max_size=3))
                for _ in range(B)]
    return x, params, history, breakers, draw(st.integers(0, 2**40))


@SETTINGS
@given(st.data())
def test_fuzz_chain(data):
    try:
        x, params, history, breakers, step = LAST["case"] = data.draw(chain_case())
        batch = Batch(params, history=history, dry_breakers=breakers, step=step)
        chain = Chain.for_batch(batch)
    except TemperanceError:
        return
    before = x.clone()
    dense = _run(lambda: chain(x, batch))
    cand = _run(lambda: Chain.for_batch(batch).candidates(x, batch).dense())
    picked = _run(lambda: Chain.for_batch(batch).sample(x, batch, raw_logprobs=True, top_n=2))
    assert torch.equal(x, before) or _illegal(before)
    if _illegal(x):
        for r in (dense, cand, picked):
            assert isinstance(r, TemperanceError), r
        return
    if isinstance(dense, TemperanceError):
        assert isinstance(cand, TemperanceError) and isinstance(picked, TemperanceError), (dense, cand, picked)
        return
    assert not isinstance(cand, TemperanceError), cand
    assert not isinstance(picked, TemperanceError), picked
    B, V = x.shape
    for out in (dense, cand):
        assert out.dtype == torch.float32
        _check_logits_out(out, x)
    t = picked.tokens
    assert t.shape == (B,) and bool(((t >= 0) & (t < V)).all()), t
    assert bool(torch.isfinite(cand.gather(1, t.view(-1, 1))).all()), "drawn from a removed token"
    assert bool(torch.isfinite(picked.logprob).all()) and bool((picked.logprob <= 1e-5).all()), picked.logprob
    assert not torch.isnan(picked.raw_logprob).any()
    assert torch.isfinite(picked.top_logprobs[:, 0]).all()


# -- every public op ------------------------------------------------------------------------------

def _knobs(data, names, B):
    """Scalars or per-row [B] tensors of hostile values (a tensor of nonsense is skipped)."""
    kw = {}
    bad = data.draw(st.integers(0, 3)) == 0  # one case in four may hold invalid values
    for name in names:
        if data.draw(st.booleans()):
            continue
        if data.draw(st.booleans()):
            v = data.draw(knob_value(name))
            if bad or _valid(name, v):
                kw[name] = v
        else:
            vals = data.draw(st.lists(st.one_of(st.sampled_from(INTS if _is_int_knob(name) else FLOATS),
                                                st.sampled_from(SPECIAL_KNOBS)), min_size=B, max_size=B))
            dtype = torch.int64 if _is_int_knob(name) else data.draw(st.sampled_from([torch.float32, torch.float64]))
            try:
                kw[name] = torch.tensor(vals, dtype=dtype)
            except (RuntimeError, OverflowError, ValueError):
                kw[name] = torch.tensor([float(v) for v in vals], dtype=torch.float64)
    return kw


OP_KNOBS = {
    "temperature": ["temperature"], "dynatemp": ["temperature", "dynatemp_range", "dynatemp_exponent"],
    "smoothing": ["smoothing_factor", "smoothing_curve"], "top_k": ["top_k"], "top_p": ["top_p"],
    "min_p": ["min_p"], "top_n_sigma": ["top_n_sigma"], "typical_p": ["typical_p"], "tfs": ["tfs_z"],
    "top_a": ["top_a"], "epsilon": ["epsilon_cutoff"], "eta": ["eta_cutoff"],
    "xtc": ["xtc_probability", "xtc_threshold"],
    "penalties": ["repetition_penalty", "frequency_penalty", "presence_penalty", "penalty_last_n"],
    "dry": ["dry_multiplier", "dry_base", "dry_allowed_length", "dry_penalty_last_n"],
    "no_repeat_ngram": ["no_repeat_ngram_size"], "logit_bias": [], "mirostat": ["mirostat"],
}
HISTORY_OPS = {"penalties", "dry", "no_repeat_ngram"}


@OP_SETTINGS
@given(st.sampled_from(sorted(OP_KNOBS)), st.data())
def test_fuzz_ops(name, data):
    x = data.draw(logits_st())
    B, V = x.shape
    kw = _knobs(data, OP_KNOBS[name], B)
    if name in HISTORY_OPS:
        kw["history"] = data.draw(history_st(B, V))
    if name == "dry":
        kw["dry_sequence_breakers"] = data.draw(st.lists(
            st.lists(st.integers(0, V + 1), min_size=0, max_size=3), max_size=3))
    if name == "xtc":
        kw.update(seed=data.draw(st.integers(0, 2**62)), step=data.draw(st.integers(0, 2**40)))
    if name == "logit_bias":
        ids = st.one_of(st.integers(0, V - 1), st.sampled_from([V, -1, 2**40]))
        kw["logit_bias"] = data.draw(st.dictionaries(
            ids, st.one_of(st.sampled_from(BIAS_VALUES), st.floats(-100, 100)), max_size=5))
    if name == "mirostat":
        kw["mu"] = data.draw(st.one_of(st.sampled_from(FLOATS + SPECIAL_KNOBS),
                                       st.lists(st.sampled_from(FLOATS), min_size=B, max_size=B)))
        kw.setdefault("mirostat", data.draw(st.sampled_from([1, 2])))
    before = x.clone()
    LAST["op"] = (name, x.clone(), kw)
    y = _run(lambda: getattr(ops, name)(x, **kw))
    assert torch.equal(x, before) or _illegal(before)
    if _illegal(x):
        assert isinstance(y, TemperanceError), f"{name} accepted illegal logits"
        return
    if isinstance(y, TemperanceError):
        return
    assert y.dtype == x.dtype
    _check_logits_out(y, x)
    assert not torch.isfinite(y[~torch.isfinite(x)]).any(), "a removed token came back"


@SETTINGS
@given(st.one_of(st.sampled_from(FLOATS + SPECIAL_KNOBS), st.lists(st.sampled_from(FLOATS + SPECIAL_KNOBS),
                                                                   min_size=1, max_size=4)),
       st.sampled_from(FLOATS + SPECIAL_KNOBS), st.sampled_from(FLOATS + SPECIAL_KNOBS),
       st.sampled_from(FLOATS + SPECIAL_KNOBS))
def test_fuzz_mirostat_update(mu, logprob, tau, eta):
    mu = torch.tensor(mu if isinstance(mu, list) else [mu], dtype=torch.float64).float()
    lp = torch.full(mu.shape, logprob, dtype=torch.float64).float()
    r = _run(lambda: ops.mirostat_update(mu, lp, mirostat_tau=tau, mirostat_eta=eta))
    if isinstance(r, TemperanceError):
        return
    assert r.shape == mu.shape and bool(torch.isfinite(r).all()) or not bool(torch.isfinite(mu).all()), r


TEXTS = ["a", "b", "ab", "\n", ":", "x:", "é", "\ufffd", "", " e", "e0", "ing", "e0ing"]


@SETTINGS
@given(st.one_of(st.none(), st.integers(), st.text(max_size=3),
                 st.lists(st.one_of(st.text(max_size=50), st.integers(), st.none()), max_size=6)),
       st.lists(st.sampled_from(TEXTS), min_size=0, max_size=12))
def test_fuzz_expand_sequence_breakers(breakers, texts):
    vocab = {t: i for i, t in enumerate(texts)}
    r = _run(lambda: ops.expand_sequence_breakers(breakers, texts, lambda s: [vocab[s]] if s in vocab else []))
    if isinstance(r, TemperanceError):
        return
    assert all(isinstance(s, tuple) and s and all(0 <= t < len(texts) for t in s) for s in r)

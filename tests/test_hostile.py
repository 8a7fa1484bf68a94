"""Issue 9 §6 and §2: the hostile cases found through the server and the API, each pinned.

* DRY sequence breakers: bounded (count and length), expanded with one tokenizer call per distinct
  tail and cached per list (the old expansion called the tokenizer per matching token and tested
  list membership per candidate: quadratic); the per-step breaker scan equals the plain scan.
* ``logit_bias``: packed once per batch; ``select``/``append`` index the packed tensors.
* A tiny positive temperature is greedy, through the whole generation loop.
* ``dry_allowed_length = 0``: any repeat is penalised (hand table).
* Greedy rows stay untouched by dynatemp and smoothing.
"""

from __future__ import annotations

import importlib
import math
import random

import pytest
import torch

from conftest_runtime_helpers import hf_tokenizer, tiny_llama
from temperance import Batch, Chain, SamplingParams, TemperanceError, ops
from temperance.generate import generate_text
from temperance.ops._common import as_history
from temperance.runtime.hf import HFRuntime

dry_mod = importlib.import_module("temperance.ops.dry")
batch_mod = importlib.import_module("temperance.batch")
bias_mod = importlib.import_module("temperance.ops.logit_bias")
INF = math.inf


# -- DRY breakers -----------------------------------------------------------------------------------

def _old_expand(breakers, texts, encode, max_tail=20):
    """The rule as the previous (quadratic) code implemented it: the reference."""
    seqs = []
    for s in breakers:
        for tok, word in enumerate(texts):
            if s in word:
                seqs.append((tok,))
                continue
            start = word.find(s[0])
            while start != -1:
                tail = word[start:]
                if s.startswith(tail):
                    seq = (tok, *encode(s[len(tail):])[:max_tail])
                    if seq not in seqs:
                        seqs.append(seq)
                start = word.find(s[0], start + 1)
    return seqs


def test_breakers_are_bounded():
    texts = ["a", "b"]
    enc = lambda s: [0]  # noqa: E731
    ops.expand_sequence_breakers(["x"] * dry_mod.MAX_BREAKERS, texts, enc)
    with pytest.raises(TemperanceError, match="at most 64 strings, got 65"):
        ops.expand_sequence_breakers(["x"] * 65, texts, enc)
    with pytest.raises(TemperanceError, match="at most 40 characters, got 41"):
        ops.expand_sequence_breakers(["y" * 41], texts, enc)
    for bad in (None, [5], "ab", [""], [None]):
        with pytest.raises(TemperanceError, match="dry_sequence_breakers must be a list of non-empty"):
            ops.expand_sequence_breakers(bad, texts, enc)
    with pytest.raises(TemperanceError, match="at most 64 strings"):  # also as a request knob
        SamplingParams(dry_sequence_breakers=[f"e{i}ing" for i in range(100)])


def test_expansion_calls_the_tokenizer_once_per_tail_and_caches_the_list():
    # 2,000 tokens ending in "e": the old code encoded the tail "0ing" 2,000 times
    texts = [f"w{i}e" for i in range(2000)] + ["e0ing", "x"]
    calls = []

    def enc(s):
        calls.append(s)
        return [len(texts) - 1] * len(s)

    br = ["e0ing", "e1ing"]
    got = ops.expand_sequence_breakers(br, texts, enc)
    assert sorted(calls) == ["0ing", "1ing"]
    assert got == _old_expand(br, texts, enc)
    calls.clear()
    assert ops.expand_sequence_breakers(br, texts, enc) is not None and calls == []  # cached
    assert ops.expand_sequence_breakers(br, list(texts), enc) == got and calls  # another vocabulary


@pytest.mark.parametrize("seed", range(30))
def test_expansion_equals_the_reference_rule(seed):
    R = random.Random(seed)
    alphabet = "ab:\n#\x00é"
    texts = ["".join(R.choice(alphabet) for _ in range(R.randint(1, 4))) for _ in range(40)]
    breakers = ["".join(R.choice(alphabet) for _ in range(R.randint(1, 5))) for _ in range(R.randint(1, 4))]
    enc = lambda s: [ord(c) % 40 for c in s][:3]  # noqa: E731
    got = ops.expand_sequence_breakers(breakers, texts, enc)
    ref = list(dict.fromkeys(_old_expand(breakers, texts, enc)))
    assert sorted(got) == sorted(ref)


def _scan_limit(h, start, breakers):
    """The plain per-position scan (the previous implementation): the reference for _rep_limit."""
    B, L = h.shape
    limit = (L - start).clone()
    for b in range(B):
        heads = {}
        for seq in breakers[b]:
            heads.setdefault(seq[0], []).append(tuple(seq[1:]))
        row = h[b].tolist()
        for p in range(L - 1, int(start[b]) - 1, -1):
            if row[p] not in heads:
                continue
            i = L - 1 - p
            tails = [t for t in heads[row[p]] if len(t) <= i and list(t) == row[p + 1:p + 1 + len(t)]]
            if tails:
                limit[b] = i - max(len(t) for t in tails)
                break
    return limit


@pytest.mark.parametrize("seed", range(40))
def test_breaker_scan_equals_the_plain_scan(seed):
    R = random.Random(seed)
    B, V = 3, 6
    hist = [[R.randrange(V) for _ in range(R.randint(0, 30))] for _ in range(B)]
    breakers = [[tuple(R.randrange(V) for _ in range(R.randint(1, 3))) for _ in range(R.randint(0, 4))]
                for _ in range(B)]
    h = as_history(hist, B, torch.device("cpu"))
    filled = (h >= 0).sum(-1)
    n = torch.tensor([R.choice([-1, 3, 10]) for _ in range(B)])
    n = torch.where(n < 0, filled, torch.minimum(n, filled))
    start = h.shape[1] - n
    assert torch.equal(dry_mod._rep_limit(h, start, breakers), _scan_limit(h, start, breakers))


def test_dry_allowed_length_zero_penalises_any_repeat():
    x = torch.zeros(1, 4)
    kw = dict(history=[[0, 1, 2, 0, 1]], dry_multiplier=1.0, dry_base=1.1, dry_sequence_breakers=[])
    assert ops.dry(x, dry_allowed_length=2, **kw)[0].tolist() == pytest.approx([0, 0, -1, 0])
    assert ops.dry(x, dry_allowed_length=1, **kw)[0].tolist() == pytest.approx([0, 0, -1.1, 0])
    assert ops.dry(x, dry_allowed_length=0, **kw)[0].tolist() == pytest.approx([-1, -1, -1.21, 0])
    # a single-token breaker is still never penalised, and the window still bounds the repeats
    assert ops.dry(x, dry_allowed_length=0, **{**kw, "dry_sequence_breakers": [[0]]})[0, 0].item() == 0.0
    y = ops.dry(x, dry_allowed_length=0, dry_penalty_last_n=2, **kw)  # window "0 1": 1 follows 0
    assert y[0].tolist() == pytest.approx([0, -1, 0, 0])
    p = SamplingParams(dry_multiplier=1.0, dry_base=1.1, dry_allowed_length=0, dry_sequence_breakers=[])
    out = Chain(p)(x, Batch(p, history=[[0, 1, 2, 0, 1]], dry_breakers=[[]]))
    assert out[0].tolist() == pytest.approx([-1, -1, -1.21, 0])


# -- logit bias --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rt():
    return HFRuntime(tiny_llama(), hf_tokenizer())


def test_logit_bias_is_packed_once_per_batch(rt, monkeypatch):
    calls = []
    real = batch_mod.pack_bias

    def counting(*a, **k):
        calls.append(len(a[0]))
        return real(*a, **k)

    monkeypatch.setattr(batch_mod, "pack_bias", counting)
    V = rt.vocab_size
    bias = {i: (i % 7) * 0.01 for i in range(V)}
    p = SamplingParams(logit_bias=bias, seed=3)
    out = generate_text(rt, [[1, 40, 41]], p, max_tokens=16, min_tokens=16, n=4)
    assert [len(c.tokens) for c in out[0]] == [16] * 4
    assert len(calls) == 1  # before: once per step (select/append dropped the packed form)
    # the packed rows follow select: the same result as packing the selected rows afresh
    b = Batch([SamplingParams(logit_bias={1: 1.0}), SamplingParams(logit_bias={2: -INF, 3: 2.0})])
    b.logit_bias(8)
    s = b.select(torch.tensor([1, 1, 0])).append(torch.tensor([0, 0, 0]))
    ids, vals = s.logit_bias(8)
    x = torch.zeros(3, 8)
    assert torch.equal(ops.logit_bias(x, logit_bias=[p.logit_bias for p in s.params]),
                       bias_mod._logit_bias_(x.clone(), ids, vals))
    assert s.bias_bans and not b.select([0]).bias_bans


def test_logit_bias_bounds():
    big = {i: 1.0 for i in range((1 << 18) + 1)}
    with pytest.raises(TemperanceError, match="at most 262144 entries"):
        SamplingParams(logit_bias=big)
    for v in (1e39, -1e39, 1e308, INF, math.nan):
        with pytest.raises(TemperanceError, match=r"logit_bias\[41\] must be in \[-1e30, 1e30\]"):
            SamplingParams(logit_bias={41: v})
    # in range, even on half-precision logits at their limit: saturates, never +inf
    y = ops.logit_bias(torch.tensor([[65000.0, 0.0]], dtype=torch.float16), logit_bias={0: 1e30, 1: -1e30})
    assert y.tolist() == [[65504.0, -65504.0]]


# -- tiny temperature and greedy rows --------------------------------------------------------------

def test_tiny_temperature_generates_as_greedy(rt):
    prompts = [[1, 40, 41, 42], [1, 60]]
    greedy = generate_text(rt, prompts, SamplingParams(temperature=0.0, seed=0), max_tokens=8)
    for T in (1e-40, 1e-38, 1e-6):
        tiny = generate_text(rt, prompts, SamplingParams(temperature=T, seed=0), max_tokens=8)
        assert [c.tokens for r in tiny for c in r] == [c.tokens for r in greedy for c in r], T
        assert all(lp == 0.0 for r in tiny for c in r for lp in c.logprobs)  # the point mass


def test_greedy_rows_are_untouched_by_dynatemp_and_smoothing():
    x = torch.tensor([[2.0, 1.0, 2.0, -1.0], [0.5, 3.0, 1.0, 0.0]])
    for kw in (dict(dynatemp_range=1.5), dict(smoothing_factor=2.0), dict(dynatemp_range=1.0, smoothing_factor=0.3)):
        g = SamplingParams(temperature=0.0, seed=0, **kw)
        b = Batch([g, SamplingParams(temperature=1.3, seed=1, **kw)])
        out = Chain.for_batch(b)(x, b)
        assert out[0].tolist() == [2.0, -INF, -INF, -INF], kw  # the point mass on the first maximum
        assert torch.isfinite(out[1]).all(), kw
        assert Chain.for_batch(b).sample(x, b).tokens[0] == 0


def test_top_n_sigma_with_overflowing_moments_or_infinite_n():
    # float32 moments overflow near its range (before: NaN threshold, a crash on the compact path)
    x = torch.tensor([[3e38, -3e38, 1e38, -INF], [1.0, 1.0, 1.0, 1.0]])
    for n in (1.0, 4.0, 1e30, 5e245):
        p = SamplingParams(top_n_sigma=n, seed=0)
        b = Batch(p, size=2)
        dense, cand = Chain(p)(x, b), Chain(p).candidates(x, b).dense()
        assert torch.equal(torch.isfinite(dense), torch.isfinite(cand)), n
        assert torch.isfinite(dense).any(-1).all() and torch.isfinite(dense[1]).all(), n
        t = Chain(p).sample(x, b).tokens
        assert bool(torch.isfinite(dense.gather(1, t.view(-1, 1))).all()), n
    # n = 1 in float64: 3e38 - 1.0 * sigma keeps the two largest logits only
    sd = torch.tensor([3e38, -3e38, 1e38], dtype=torch.float64).std(unbiased=False).item()
    kept = ops.top_n_sigma(x[:1], top_n_sigma=1.0)
    assert torch.isfinite(kept).tolist() == [[True, False, 3e38 - sd <= 1e38, False]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_the_issue_examples_are_errors_or_valid(dtype):
    """The crashes and created inf/NaN quoted in issue 9 §6, each now an error or a valid result."""
    x = (torch.randn(2, 50, generator=torch.Generator().manual_seed(0)) * 3).to(dtype)
    hist = [[1, 2, 3, 1, 2], [4, 4, 4]]

    def valid(y, out=dtype):
        assert y.dtype == out and not torch.isnan(y).any() and not (y == INF).any()
        assert torch.isfinite(y).any(-1).all()

    with pytest.raises(TemperanceError, match=r"logit_bias\[41\] must be in"):
        ops.logit_bias(x, logit_bias={41: 1e39})
    valid(ops.logit_bias(x, logit_bias={41: 1e30}))
    with pytest.raises(TemperanceError, match="smoothing_factor must be in"):
        SamplingParams(smoothing_factor=1e308, top_n_sigma=1.0, tfs_z=0.9, eta_cutoff=0.01)
    p = SamplingParams(smoothing_factor=1e30, top_n_sigma=1.0, tfs_z=0.9, eta_cutoff=0.01, seed=0)
    b = Batch(p, history=hist, dry_breakers=[[], []])
    valid(Chain(p)(x, b), torch.float32)  # (the chain computes in float32)
    assert int(Chain(p).sample(x, b).tokens.max()) < 50
    valid(ops.penalties(x, history=hist, repetition_penalty=1e30))
    valid(ops.penalties(x, history=hist, repetition_penalty=1e-30, frequency_penalty=-1e30))
    with pytest.raises(TemperanceError, match="frequency_penalty must be in"):
        ops.penalties(x, history=hist, frequency_penalty=1e39)
    with pytest.raises(TemperanceError, match="logprob must be finite"):
        ops.mirostat_update(torch.tensor([10.0]), torch.tensor([-INF]), mirostat_tau=5.0, mirostat_eta=0.0)
    mu = ops.mirostat_update(torch.tensor([10.0]), torch.tensor([-1e4]), mirostat_tau=1e30, mirostat_eta=1e30)
    assert torch.isfinite(mu).all()
    for bad in (None, [5]):
        with pytest.raises(TemperanceError, match="dry_sequence_breakers"):
            ops.expand_sequence_breakers(bad, ["a"], lambda s: [0])
    for T in (1e-6, 1e-5, 1e-3):
        valid(ops.dynatemp(x * 1e3 if dtype == torch.float16 else x * 1e30, temperature=T, dynatemp_range=T / 2))


def test_shaping_kernels_leave_an_all_masked_row_alone():
    # (a chain never passes one on, but a bug upstream must not turn it into NaN)
    temp = importlib.import_module("temperance.ops.temperature")
    row = torch.full((1, 3), -INF)
    for T in (0.5, 1e-5, 3.0, 0.0, torch.tensor([0.5])):
        assert torch.equal(temp._temperature_(row.clone(), T), row), T
    smooth = importlib.import_module("temperance.ops.smoothing")
    assert torch.equal(smooth._smoothing_(row.clone(), 2.0, 3.0), row)
    dyn = importlib.import_module("temperance.ops.dynatemp")
    assert torch.equal(dyn._dynatemp_(row.clone(), 0.5, 0.4, 1.0), row)


def test_a_penalty_that_overflows_float32_saturates_it_does_not_mask():
    x = torch.tensor([[-3.87e37, 3e38, 1.0]])
    for kw in (dict(repetition_penalty=7e16), dict(repetition_penalty=1e-30),
               dict(frequency_penalty=1e30), dict(presence_penalty=-1e30)):
        for dtype in (torch.float32, torch.bfloat16):
            y = ops.penalties(x.to(dtype), history=[[0, 1]], **kw)
            assert torch.isfinite(y).all() and y.dtype == dtype, (kw, dtype, y)
        p = SamplingParams(seed=0, **kw)
        out = Chain(p)(x, Batch(p, history=[[0, 1]]))
        assert torch.isfinite(out).all(), (kw, out)

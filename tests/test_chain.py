"""Chain: orders and presets, printing, errors, mirostat's reduced chain, skipping inactive stages,
candidates() == __call__, no mutation of the caller's logits, per-row state, Batch verbs."""

from __future__ import annotations

import math
import random

import pytest
import torch

from temperance import PRESETS, SAMPLERS, Batch, Chain, SamplingParams, TemperanceError, ops
from temperance.states import MirostatState

INF = math.inf
DECISIONS_ORDER = ("logit_bias → penalties → dry → top_n_sigma → top_k → typical_p → top_p → min_p "
                   "→ xtc → temperature")


# -- orders, presets, printing, errors -------------------------------------------------------------

def test_default_order_pinned():
    s = str(Chain())
    assert s == ("logit_bias → penalties → dry → no_repeat_ngram → top_n_sigma → top_k → tfs → "
                 "typical_p → top_p → min_p → top_a → epsilon → eta → xtc → temperature")
    # restricted to the samplers decisions.md lists in its order line, it is that line exactly
    named = DECISIONS_ORDER.split(" → ")
    assert " → ".join(n for n in s.split(" → ") if n in named) == DECISIONS_ORDER
    assert str(Chain("llama.cpp")) == s == " → ".join(SAMPLERS)
    assert str(Chain(SamplingParams())) == s


def test_presets_print():
    assert str(Chain("vllm")) == "logit_bias → penalties → temperature → top_k → top_p → min_p"
    assert str(Chain("openai")) == str(Chain("vllm"))
    assert str(Chain("hf")) == ("logit_bias → penalties → no_repeat_ngram → temperature → top_k → "
                                "top_p → min_p → typical_p → epsilon → eta")
    assert str(Chain("penalties,top_k,top_p,min_p,temperature")) == \
        "penalties → top_k → top_p → min_p → temperature"
    assert str(Chain(["temp", "nucleus"])) == "temperature → top_p"
    assert repr(Chain("top_k,temp")) == "Chain('top_k → temperature')"
    assert tuple(Chain("hf").names) == PRESETS["hf"]


@pytest.mark.parametrize("order, fragment", [
    ("top_k,bogus", "unknown sampler 'bogus'"),
    (["top_k", "top_k"], "sampler 'top_k' appears twice"),
    ("top_p,nucleus", "sampler 'top_p' appears twice"),
    ([], None),  # an empty chain is allowed: it runs nothing
])
def test_unknown_names_and_duplicates_are_errors(order, fragment):
    if fragment is None:
        c = Chain(order)
        assert str(c) == "" and torch.equal(c(torch.ones(1, 3), Batch(SamplingParams(), size=1)), torch.ones(1, 3))
        return
    with pytest.raises(TemperanceError, match=fragment):
        Chain(order)


def test_knob_without_stage_is_an_error():
    with pytest.raises(TemperanceError, match="min_p=0.1 is set but the sampler order has no 'min_p' stage"):
        SamplingParams(min_p=0.1, samplers="top_k,temperature")


def test_chain_rejects_rows_with_knobs_outside_its_order():
    x = torch.tensor([[0.5, 0.3, 0.15, 0.04, 0.01]]).log()
    b = Batch(SamplingParams(min_p=0.2), size=1)
    try:
        out = Chain("top_k,temperature")(x, b)
    except TemperanceError:
        return
    assert torch.isfinite(out).sum() == 2, "min_p was silently dropped"


def test_for_batch_requires_one_order():
    b = Batch([SamplingParams(top_k=3), SamplingParams(samplers="vllm", top_k=3)])
    with pytest.raises(TemperanceError, match="rows of one chain must share one sampler order"):
        Chain.for_batch(b)
    b = Batch([SamplingParams(mirostat=2), SamplingParams(mirostat=1, temperature=0.5)])
    assert str(Chain.for_batch(b)) == "logit_bias → penalties → temperature → mirostat"


# -- mirostat --------------------------------------------------------------------------------------

def test_mirostat_replaces_truncation_and_starts_at_two_tau():
    p = SamplingParams(mirostat=2, mirostat_tau=3.0, temperature=0.5, seed=1)
    chain = Chain(p)
    assert str(chain) == "logit_bias → penalties → temperature → mirostat"
    x = torch.tensor([[0.5, 0.3, 0.15, 0.04, 0.01]]).log() * 0.5  # = log p at T = 0.5 below
    out = chain(x, Batch(p, size=1))
    # temperature 0.5 gives back log p; mu = 2·tau = 6 bits keeps surprise <= 6: tokens 0..3
    assert torch.isfinite(out).view(-1).tolist() == [True, True, True, True, False]
    torch.testing.assert_close(out, ops.mirostat(x / 0.5, mu=6.0, mirostat=2))
    with pytest.raises(TemperanceError, match="has no effect with mirostat=2"):
        SamplingParams(mirostat=2, top_p=0.9)


def test_mirostat_mu_updates_and_follows_select():
    V, steps = 50, 6
    g = torch.Generator().manual_seed(0)
    seq = torch.randn(steps, 3, V, generator=g) * 3
    params = [SamplingParams(mirostat=2, mirostat_tau=t, mirostat_eta=0.5, seed=i)
              for i, t in enumerate((2.0, 4.0, 6.0))]

    def alone(i, n):
        b, c, toks, mus = Batch(params[i], size=1), Chain(params[i]), [], []
        st = MirostatState(b)
        for s in range(n):
            t = c.sample(seq[s, i:i + 1], b, state=st).tokens
            toks.append(int(t)), mus.append(float(st.mu[0]))
            b = b.append(t)
        return toks, mus

    b, c = Batch(params), Chain(params[0])
    st = MirostatState(b)
    toks, mus = [], []
    for s in range(3):
        picked = c.sample(seq[s], b, state=st)
        toks.append(picked.tokens.tolist()), mus.append(st.mu.tolist())
        b = b.append(picked.tokens)
    # mu = 2·tau at the start, then mu - eta·(S - tau) with S the chosen token's surprise (bits)
    b1, c1 = Batch(params), Chain(params[0])
    st1 = MirostatState(b1)
    p0 = c1.sample(seq[0], b1, state=st1)
    S = -p0.logprob.double() / math.log(2)
    expected = torch.tensor([4.0, 8.0, 12.0], dtype=torch.float64) - 0.5 * (S - torch.tensor([2.0, 4.0, 6.0]))
    torch.testing.assert_close(st1.mu.double(), expected, rtol=1e-6, atol=1e-6)
    # rows reordered / dropped: the state follows
    idx = torch.tensor([2, 0])
    st.select(idx)
    b = b.select(idx)
    for s in range(3, steps):
        picked = c.sample(seq[s][idx], b, state=st)
        toks.append(picked.tokens.tolist()), mus.append(st.mu.tolist())
        b = b.append(picked.tokens)
    for j, i in enumerate(idx.tolist()):
        ref_toks, ref_mus = alone(i, steps)
        got_toks = [t[i] for t in toks[:3]] + [t[j] for t in toks[3:]]
        got_mus = [m[i] for m in mus[:3]] + [m[j] for m in mus[3:]]
        assert got_toks == ref_toks
        assert got_mus == pytest.approx(ref_mus, abs=1e-5)


def test_mirostat_v1_in_the_chain_keeps_its_k():
    N = 1000
    x = (-1.2 * torch.log(torch.arange(1, N + 1, dtype=torch.float64))).float().view(1, -1)
    p = SamplingParams(mirostat=1, mirostat_tau=3.0, seed=0)  # mu = 6 -> k = 10 (test_ops_tables)
    assert torch.isfinite(Chain(p)(x, Batch(p, size=1))).sum() == 10


# -- skipping, mutation, candidates == __call__ ---------------------------------------------------

def test_inactive_samplers_are_skipped():
    x = torch.randn(3, 20, generator=torch.Generator().manual_seed(0))
    b = Batch(SamplingParams(), size=3)
    chain = Chain()
    assert chain.stages(x, b) == []
    assert torch.equal(chain(x, b), x) and torch.equal(chain.candidates(x, b).dense(), x)
    b = Batch([SamplingParams(top_k=3), SamplingParams(min_p=0.1, temperature=0.5), SamplingParams()])
    assert [n for n, _ in chain.stages(x, b)] == ["top_k", "min_p", "temperature"]
    # T = 0 is the temperature stage's point mass: stages show what is sampled (one token per row)
    st0 = chain.stages(x, Batch(SamplingParams(temperature=0.0), size=3))
    assert [n for n, _ in st0] == ["temperature"]
    assert torch.isfinite(st0[0][1]).sum(-1).tolist() == [1, 1, 1]
    assert torch.equal(st0[0][1].argmax(-1), x.argmax(-1))
    # stages() shows every intermediate result, the last equals __call__
    st = chain.stages(x, b)
    assert torch.equal(st[-1][1], chain(x, b))


def _batch_cases():
    """(params per row, V) for the equality and mutation tests."""
    R = random.Random(7)
    cases = []
    pool = [
        dict(top_k=3), dict(top_k=1), dict(top_p=0.9), dict(top_p=0.3), dict(min_p=0.1), dict(min_p=0.6),
        dict(top_n_sigma=1.0), dict(typical_p=0.7), dict(tfs_z=0.9), dict(top_a=0.2),
        dict(epsilon_cutoff=0.02), dict(eta_cutoff=0.01), dict(xtc_probability=1.0, xtc_threshold=0.05),
        dict(temperature=0.0), dict(temperature=0.6), dict(temperature=3.0),
        dict(smoothing_factor=0.4, temperature=1.2), dict(repetition_penalty=1.3),
        dict(frequency_penalty=0.4, presence_penalty=0.3, penalty_last_n=4),
        dict(logit_bias={2: 3.0, 5: -INF}), dict(no_repeat_ngram_size=2), dict(dry_multiplier=0.8,
                                                                               dry_sequence_breakers=[]),
    ]
    for n in range(60):
        B = R.choice([1, 2, 4])
        same = R.random() < 0.5
        rows = []
        base = {}
        for _ in range(R.choice([1, 2, 3])):
            base.update(R.choice(pool))
        for i in range(B):
            kw = dict(base) if same else {}
            if not same:
                for _ in range(R.choice([0, 1, 2, 3])):
                    kw.update(R.choice(pool))
            rows.append(SamplingParams(**kw, seed=1000 * n + i))
        cases.append((rows, R.choice([8, 64, 1500, 4096])))
    # every row on the compacted fast paths (top-k with penalties/bias before it, min-p, top-p ...)
    for kw in (dict(top_k=5, repetition_penalty=1.5, logit_bias={1: 10.0}), dict(top_k=40),
               dict(min_p=0.05, temperature=0.7), dict(top_p=0.8, typical_p=0.9),
               dict(top_n_sigma=0.5, xtc_probability=1.0, xtc_threshold=0.01),
               dict(top_k=2, frequency_penalty=1.0, presence_penalty=-0.5, logit_bias={0: -INF})):
        for V in (64, 1500, 2**15):
            cases.append(([SamplingParams(**kw, seed=s) for s in range(3)], V))
    return cases


CASES = _batch_cases()


def _logits(i, B, V):
    g = torch.Generator().manual_seed(i)
    x = torch.randn(B, V, generator=g) * 3
    if i % 3 == 0:
        x = torch.round(x)  # ties everywhere, also at the top-k / top-p boundaries
    if i % 5 == 1:
        x[:, ::4] = -INF
    return x


def test_candidates_equal_call_on_random_inputs():
    for i, (rows, V) in enumerate(CASES):
        B = len(rows)
        x = _logits(i, B, V)
        b = Batch(rows, history=[[(3 * i + j) % V for j in range(9)]] * B, step=i)
        chain = Chain()
        dense = chain(x, b)
        cand = chain.candidates(x, b)
        assert cand.logits.shape[0] == B and cand.vocab_size == V
        assert torch.equal(cand.dense(), dense), (i, V, rows[0])
        assert torch.isfinite(dense).any(-1).all()


@pytest.mark.parametrize("native", [True, False], ids=["native", "torch"])
@pytest.mark.parametrize("kw", [dict(min_p=0.05), dict(top_p=0.99), dict(typical_p=0.999),
                                dict(top_n_sigma=3.0)], ids=lambda kw: next(iter(kw)))
def test_flat_rows_stay_dense_and_equal_call(kw, native):
    """When most of a row survives (a high temperature before the cut), the survivors come back
    as the masked dense row, ids = all of V (compacting nearly everything costs more than it
    saves); values and kept sets equal __call__ either way."""
    from temperance.eval.grid import TEMPERATURE_FIRST
    from temperance.ops import _native

    sharp_x = _logits(2, 4, 4096)
    flat_x = sharp_x.clone()
    flat_x[1] = torch.linspace(0, -2, 4096)  # a flat row: most tokens survive at T = 50
    flat = SamplingParams(samplers=TEMPERATURE_FIRST, temperature=50.0, **kw)
    sharp = SamplingParams(samplers=TEMPERATURE_FIRST, temperature=0.3, **kw)
    with _native.use(native):
        for params, x, dense_form in ((flat, flat_x, True), (sharp, sharp_x, False)):
            b = Batch(params, size=4)
            c = Chain(params).candidates(x, b)
            assert c.is_whole == dense_form, params
            assert torch.equal(c.dense(), Chain(params)(x, b))


def test_top_n_sigma_moments_by_blocks_match_the_masked_rule():
    import importlib

    tns = importlib.import_module("temperance.ops.top_n_sigma")

    x = _logits(4, 40, 20000)                 # 40 rows: several blocks of 6
    x[7, ::3] = -INF                          # a masked row in one block only
    x[9, 5] = float("nan")                    # (non-finite entries are left out, as -inf)
    from temperance.ops import _native

    with _native.use(False):
        mean, var = tns._moments(x)
    native_mean, native_var = tns._moments(x)  # the kernel: the same sums in another order
    assert torch.allclose(native_mean, mean, rtol=1e-12, atol=1e-12)
    assert torch.allclose(native_var, var, rtol=1e-12)
    xd = x.double()
    finite = torch.isfinite(xd)
    count = finite.sum(-1, keepdim=True).double()
    m = torch.where(finite, xd, 0.0).sum(-1, keepdim=True) / count
    v = (torch.where(finite, xd - m, 0.0) ** 2).sum(-1, keepdim=True) / count
    assert torch.equal(mean, m) and torch.equal(var, v)


def test_candidates_ties_at_the_boundaries():
    # top-k boundary tie: k = 2 among three equal maxima; top-p crossing inside a block of ties
    x = torch.tensor([[0.0, 2.0, 2.0, 2.0, 1.0, 2.0] + [-1.0] * 1100])
    b = Batch(SamplingParams(top_k=2), size=1)
    assert torch.isfinite(Chain().candidates(x, b).dense()[0, :6]).tolist() == [False, True, True, False, False, False]
    assert torch.equal(Chain().candidates(x, b).dense(), Chain()(x, b))
    x = torch.zeros(2, 3000)
    x[:, 100:110] = 10.0  # ten tied tokens of p = 0.0987 each
    b = Batch([SamplingParams(top_p=0.35), SamplingParams(top_p=0.5)])
    d = Chain()(x, b)
    assert torch.equal(Chain().candidates(x, b).dense(), d)
    assert torch.isfinite(d).sum(-1).tolist() == [4, 6]
    assert torch.isfinite(d[0]).nonzero().view(-1).tolist() == [100, 101, 102, 103]


def test_callers_logits_are_not_mutated():
    for i, (rows, V) in enumerate(CASES[::3]):
        x = _logits(i, len(rows), V)
        before = x.clone()
        b = Batch(rows, history=[[1, 2, 1, 2]] * len(rows))
        chain = Chain()
        chain(x, b)
        chain.candidates(x, b)
        chain.sample(x, b, raw_logprobs=True)
        chain.stages(x, b)
        assert torch.equal(x, before), rows[0]
    x64 = _logits(0, 2, 50).double()
    before = x64.clone()
    out = Chain()(x64, Batch(SamplingParams(top_k=3, temperature=0.5), size=2))
    assert torch.equal(x64, before) and out.dtype == torch.float32


def test_candidates_survive_the_next_call():
    chain = Chain()
    b = Batch(SamplingParams(temperature=0.5), size=2)
    x1, x2 = torch.randn(2, 50), torch.randn(2, 50)
    c1 = chain.candidates(x1, b)
    first = c1.dense().clone()
    chain.candidates(x2, b)
    assert torch.equal(c1.dense(), first)


def test_sparse_top_k_detects_a_row_emptied_by_logit_bias():
    x = torch.tensor([[0.0, 1.0]])
    b = Batch(SamplingParams(top_k=1, logit_bias={0: -INF, 1: -INF}, seed=0), size=1)
    with pytest.raises(TemperanceError, match="logit_bias banned every token"):
        Chain()(x, b)
    try:
        picked = Chain().sample(x, b)
    except TemperanceError as e:
        assert "logit_bias banned every token" in str(e)
        return
    assert False, f"sample returned token {picked.tokens.tolist()} (V = 2), logprob {picked.logprob.tolist()}"


def test_top_p_compaction_agrees_with_dense_near_the_boundary():
    import numpy as np
    B, V = 64, 2**15
    x = torch.randn(B, V, generator=torch.Generator().manual_seed(0)) * 2
    rng = np.random.default_rng(0)
    params, want = [], []
    for i in range(B):
        row = x[i].double().numpy()
        e = np.exp(row - row.max())
        cum = np.cumsum(e[np.lexsort((np.arange(V), -row))]) / e.sum()
        n = int(rng.integers(V // 10, V // 2))
        p32 = np.nextafter(np.float32(cum[n - 1]), np.float32(2))  # just above the mass of n tokens
        params.append(SamplingParams(top_p=float(p32), seed=i))
        want.append(n + 1)
    b = Batch(params)
    assert torch.isfinite(Chain()(x, b)).sum(-1).tolist() == want  # dense: exact
    assert torch.isfinite(Chain().candidates(x, b).dense()).sum(-1).tolist() == want


# -- greedy rows, mixed batches ------------------------------------------------------------------

def test_t0_and_t_positive_rows_in_one_batch():
    x = torch.tensor([[1.0, 3.0, 3.0, 0.0], [1.0, 3.0, 3.0, 0.0], [1.0, 3.0, 3.0, 0.0]])
    b = Batch([SamplingParams(temperature=0, seed=1), SamplingParams(temperature=2.0, seed=2),
               SamplingParams(temperature=0.5, top_k=2, seed=3)])
    out = Chain()(x, b)
    assert out[0].tolist() == [-INF, 3.0, -INF, -INF]  # greedy row: a point mass on the first max
    assert out[1].tolist() == [0.5, 1.5, 1.5, 0.0]
    assert out[2].tolist() == [-INF, 6.0, 6.0, -INF]
    for s in range(10):
        p = Chain().sample(x, Batch(b.params, step=s))
        assert p.tokens[0] == 1 and p.tokens[2] in (1, 2)
        assert p.logprob[0] == 0.0  # the greedy row's distribution is the point mass


def test_all_greedy_batches_compact_to_one_candidate():
    x = torch.randn(4, 3000, generator=torch.Generator().manual_seed(3))
    x[1, 7] = x[1, 9] = x[1].max() + 1  # a tie: the lower id
    for kw in (dict(), dict(top_k=5)):
        b = Batch(SamplingParams(temperature=0.0, seed=0, **kw), size=4)
        c = Chain.for_batch(b).candidates(x, b)
        assert c.ids.shape[1] == (5 if kw else 1), kw  # (top-k compacts first: 5, one of them finite)
        d = c.dense()
        assert torch.isfinite(d).sum(-1).tolist() == [1] * 4 and d.argmax(-1).tolist() == x.argmax(-1).tolist()
        assert torch.equal(d, Chain.for_batch(b)(x, b)), kw
        p = Chain.for_batch(b).sample(x, b, top_n=3)
        assert p.tokens.tolist() == x.argmax(-1).tolist() and p.logprob.tolist() == [0.0] * 4


def test_greedy_rows_do_not_depend_on_the_batch():
    x = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    for kw in (dict(dynatemp_range=0.5), dict(smoothing_factor=0.5)):
        g = SamplingParams(temperature=0.0, seed=0, **kw)
        alone = Chain()(x, Batch(g, size=1))
        mixed = Chain()(torch.cat([x, x]), Batch([g, SamplingParams(temperature=1.0, seed=1, **kw)]))
        assert torch.equal(mixed[0], alone[0]), kw


# -- Batch -----------------------------------------------------------------------------------------

def test_batch_select_and_append():
    params = [SamplingParams(top_k=k, seed=s, logit_bias={k: 1.0}) for k, s in ((1, 10), (2, 20), (3, 30))]
    b = Batch(params, history=[[5], [6, 7], []], step=torch.tensor([4, 5, 6]),
              dry_breakers=[[[1]], [[2]], [[3]]])
    b.knob("top_k")  # cache a knob, then select: the cache must follow
    s = b.select(torch.tensor([2, 0, 0]))
    assert len(s) == 3 and s.knob("top_k").tolist() == [3, 1, 1]
    assert s.seed.tolist() == [30, 10, 10] and s.step.tolist() == [6, 4, 4]
    assert s.history.tolist() == [[-1, -1], [-1, 5], [-1, 5]]
    assert s.dry_breakers == [[[3]], [[1]], [[1]]]
    ids, vals = s.logit_bias(8)
    assert ids.tolist() == [[3], [1], [1]] and vals.tolist() == [[1.0], [1.0], [1.0]]
    a = s.append(torch.tensor([9, 8, 7]))
    assert a.history.tolist() == [[-1, -1, 9], [-1, 5, 8], [-1, 5, 7]]
    assert a.step.tolist() == [7, 5, 5] and a.seed.tolist() == [30, 10, 10]
    assert s.history.shape == (3, 2)  # the old batch is unchanged
    assert b.select([1]).params == (params[1],)
    assert not b.select([0]).active("top_p") and b.select([0]).active("top_k")


def test_batch_seeds_drawn_from_torch_when_missing():
    torch.manual_seed(0)
    a = Batch(SamplingParams(), size=3).seed
    torch.manual_seed(0)
    assert torch.equal(a, Batch(SamplingParams(), size=3).seed)
    assert Batch([SamplingParams(seed=5), SamplingParams()]).seed[0] == 5


def test_batch_errors():
    with pytest.raises(TemperanceError, match="a batch needs at least one row"):
        Batch([])
    with pytest.raises(TemperanceError, match="sequence breakers are strings"):
        Batch(SamplingParams(dry_multiplier=0.8), size=1)
    with pytest.raises(TemperanceError, match="logits have 2 rows but the batch has 1"):
        Chain()(torch.zeros(2, 3), Batch(SamplingParams(), size=1))

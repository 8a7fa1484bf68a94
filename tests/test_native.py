"""The native mass-cut kernels (ops/_native.cpp) against the pure-torch reference (ops/_cut.py):
identical kept sets and values on many random rows — ties, -inf, V = 1, tiny and huge values, flat
rows, half-precision inputs — and a build that is silent and never required."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from temperance import Batch, Chain, SamplingParams, ops
from temperance.ops import _native
from temperance.ops.top_p import nucleus_candidates
from temperance.ops.typical import candidates as typical_candidates

needs_native = pytest.mark.skipif(_native.lib() is None, reason="the native kernels did not build here")
SRC = str(Path(__file__).resolve().parents[1] / "src")


def rows(seed: int, B: int, V: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(B):
        style = rng.integers(8)
        if style == 0:
            r = rng.normal(0, rng.choice([0.01, 1, 3, 30]), V)
        elif style == 1:  # ties everywhere
            r = np.round(rng.normal(0, 2, V) * 2) / 2
        elif style == 2:  # a flat row
            r = np.full(V, rng.normal())
        elif style == 3:  # huge and tiny magnitudes
            r = rng.choice([1e30, -1e30, 3e38, -3e38, 1e-30, -1e-30, 0.0, 1.0], V)
        elif style == 4:  # zipf-like with a peaked head
            r = -rng.uniform(0.6, 2) * np.log(rng.permutation(V) + 1.0) + rng.normal(0, 0.3, V)
        elif style == 5:  # ties at the top
            r = rng.normal(0, 1, V)
            r[rng.integers(V, size=max(1, V // 10))] = r.max() + 1
        else:
            r = rng.normal(0, 3, V)
        if rng.random() < 0.3:  # masked entries; keep one finite
            r[rng.random(V) < rng.uniform(0.1, 0.99)] = -np.inf
            r[rng.integers(V)] = rng.normal()
        out.append(r)
    return torch.tensor(np.array(out), dtype=torch.float32)


def knobs(seed: int, B: int, zero: bool) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    choices = [1e-6, 0.05, 0.3, 0.5, 0.8, 0.9, 0.95, 0.999, 1.0] + ([0.0] if zero else [])
    return torch.tensor(rng.choice(choices, B), dtype=torch.float32)


OPS = {"top_p": (ops.top_p, nucleus_candidates, True), "typical_p": (ops.typical_p, typical_candidates, False)}


@needs_native
@pytest.mark.parametrize("name", sorted(OPS))
@pytest.mark.parametrize("V", [1, 2, 7, 100, 5000, 40000])
def test_native_equals_reference(name, V):
    op, cands, zero = OPS[name]
    B = 200 if V <= 5000 else 24
    x = rows(V, B, V)
    p = knobs(V + 1, B, zero)
    with _native.use(True):
        a = op(x, **{name: p})
    with _native.use(False):
        b = op(x, **{name: p})
    assert torch.equal(a, b)
    active = p < 1  # the compacted form (what the chain uses) on rows where the sampler is on
    if bool(active.any()):
        xa, pa = x[active].contiguous(), p[active]
        with _native.use(True):
            ca = cands(xa, pa)
        with _native.use(False):
            cb = cands(xa, pa)
        assert torch.equal(ca.dense(), cb.dense())
        assert torch.equal(ca.dense(), op(xa, **{name: pa}))


@needs_native
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_native_and_reference_agree_on_other_dtypes(dtype):
    x, fm = rows(3, 64, 3000), min(torch.finfo(dtype).max, torch.finfo().max)  # saturate: +inf is an error
    x = torch.where(torch.isinf(x), x, x.clamp(-fm, fm)).to(dtype)
    p = knobs(4, 64, True)
    for name, (op, _, zero) in OPS.items():
        q = p if zero else p.clamp(min=1e-6)
        with _native.use(True):
            a = op(x, **{name: q})
        with _native.use(False):
            b = op(x, **{name: q})
        assert a.dtype == dtype and torch.equal(a, b), name
        if dtype != torch.float64:  # half inputs are cut as the float32 values they are
            assert torch.equal(a, op(x.float(), **{name: q}).to(dtype)), name


@needs_native
def test_chain_gives_the_same_tokens_on_both_paths():
    x = rows(9, 32, 6000)
    params = [SamplingParams(top_p=float(v), typical_p=0.9, seed=i) for i, v in enumerate(knobs(9, 32, True))]
    out = []
    for on in (True, False):
        with _native.use(on):
            b = Batch(params)
            out.append((Chain(params[0]).sample(x, b).tokens, Chain(params[0])(x, b)))
    assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])


def _run(code: str, **env) -> subprocess.CompletedProcess:
    e = {**os.environ, "PYTHONPATH": SRC, **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e, timeout=300)


def test_native_build_is_silent_and_never_required(tmp_path):
    code = ("import torch; from temperance import ops; from temperance.ops import _native; "
            "y = ops.top_p(torch.tensor([[0.0, 1.0, 2.0]]), top_p=0.5); "
            "print(_native.lib() is not None, torch.isfinite(y).sum().item())")
    fresh = _run(code, XDG_CACHE_HOME=str(tmp_path / "cache"))
    assert fresh.stderr == "" and fresh.stdout.split()[1] == "1"  # nothing printed while building
    if fresh.stdout.split()[0] == "True":
        assert list((tmp_path / "cache" / "temperance" / "native").glob("cut-*.so"))
    off = _run(code, TEMPERANCE_NATIVE="0", XDG_CACHE_HOME=str(tmp_path / "off"))
    no_cxx = _run(code, CXX=str(tmp_path / "no-such-compiler"), XDG_CACHE_HOME=str(tmp_path / "none"))
    for r in (off, no_cxx):
        assert r.stderr == "" and r.stdout.split() == ["False", "1"]


@needs_native
def test_native_uniform_is_the_torch_hash_bit_for_bit():
    from temperance import noise
    g = torch.Generator().manual_seed(0)
    B, K = 64, 500
    seed = torch.cat([torch.tensor([0, 1, 2**63 - 1, 2**62]), torch.randint(0, 2**62, (B - 4,), generator=g)])
    step = torch.randint(0, 2**40, (B,), generator=g)
    ids = torch.randint(0, 2**20, (B, K), generator=g)
    for salt in (noise.SALT_PICK, noise.SALT_XTC):
        assert torch.equal(noise.uniform(seed, step, ids, salt), noise._torch_uniform(seed, step, ids, salt))
    assert noise.uniform(seed[:1], step[:1], ids[:1, :3])[0, 2].item() == noise.reference_uniform(
        0, int(step[0]), int(ids[0, 2]))


@needs_native
@pytest.mark.parametrize("name", ["min_p", "top_k"])
def test_threshold_ops_equal_their_torch_path(name):
    x = rows(11, 200, 3000)
    kw = {"min_p": dict(min_p=torch.tensor(np.random.default_rng(0).choice([0, 0.01, 0.1, 0.5, 1], 200),
                                           dtype=torch.float32)),
          "top_k": dict(top_k=torch.tensor(np.random.default_rng(0).choice([0, 1, 5, 40, 3000], 200)))}[name]
    op = getattr(ops, name)
    with _native.use(True):
        a = op(x, **kw)
        c = Chain(name).candidates(x, Batch([SamplingParams(**{name: 0.05 if name == "min_p" else 7})] * 200))
    with _native.use(False):
        b = op(x, **kw)
        d = Chain(name).candidates(x, Batch([SamplingParams(**{name: 0.05 if name == "min_p" else 7})] * 200))
    assert torch.equal(a, b) and torch.equal(c.dense(), d.dense())


@needs_native
@pytest.mark.parametrize("seed", range(4))
def test_penalties_then_top_k_in_one_native_call_equals_the_dense_chain(seed):
    # the default chain's fast path (penalties -> top_k in one pass) against the dense stages
    rng = np.random.default_rng(seed)
    B, V = 24, [50, 700, 5000, 40000][seed]
    x = rows(seed, B, V)
    x[:, 0] = 1e30  # a huge logit penalised or not
    params = [SamplingParams(top_k=int(rng.choice([1, 3, 40])), repetition_penalty=float(rng.choice([0.5, 1.0, 1.3])),
                             frequency_penalty=float(rng.choice([0, 0.4, -0.7])),
                             presence_penalty=float(rng.choice([0, 0.3, -2.0])),
                             penalty_last_n=int(rng.choice([-1, 0, 4, 64])), temperature=0.7, seed=i)
              for i in range(B)]
    history = [list(rng.integers(0, min(V, 30), int(rng.integers(0, 100)))) for _ in range(B)]
    b = Batch(params, history=history)
    chain = Chain(params[0])
    with _native.use(True):
        fast = chain.candidates(x, b).dense()
    with _native.use(False):
        dense = chain(x, b)
        slow = chain.candidates(x, b).dense()
    assert torch.equal(fast, dense) and torch.equal(slow, dense)


def test_gumbel_scores_are_logits_plus_gumbel_bit_for_bit():
    from temperance import noise
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 50000, (16, 300), generator=g)
    seed, step = torch.randint(0, 2**62, (16,), generator=g), torch.arange(16)
    logits = torch.randn(16, 300, generator=g) * 5
    assert torch.equal(noise.gumbel_scores(seed, step, ids, logits), noise.gumbel(seed, step, ids) + logits)


def test_a_range_near_float32_min_does_not_crash_the_cut():
    """The histogram scale once overflowed to inf for a row spanning ~FLT_MIN (0 * inf = NaN bin)."""
    x = torch.zeros(1, 64)
    x[0, 0] = -1.1754944e-38
    for V in (64, 1100):
        y = torch.zeros(1, V)
        y[0, 0] = -1.1754944e-38
        kept = torch.isfinite(ops.top_p(y, top_p=0.5))
        assert 1 <= int(kept.sum()) <= V
        assert torch.isfinite(ops.typical_p(y, typical_p=0.5)).any()

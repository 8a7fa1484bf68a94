"""Likelihood-free temperature on a language model (temperance.implicit_lm), on tiny random Llamas.

Statistical checks use fixed seeds; tolerances are stated per test (chi-square at p > 1e-3, with
bins of expected count < 5 pooled).
"""

from __future__ import annotations

import argparse
import math
from collections import Counter

import numpy as np
import pytest
import torch
from conftest_runtime_helpers import hf_tokenizer, tiny_llama
from scipy import stats

from temperance.errors import TemperanceError
from temperance.implicit import temper_many
from temperance.implicit_lm import (ChunkSampler, add_parser, chunk_distribution, compare, logit_tempered,
                                    tempered_distribution, total_variation)
from temperance.runtime.hf import HFRuntime

torch.set_num_threads(1)
PROMPT = [1, 2, 3]


def small_runtime(seed: int) -> HFRuntime:
    """V = 6, no EOS: every chunk has exactly K tokens, so V^K chunks can be enumerated."""
    return HFRuntime(tiny_llama(vocab_size=6, seed=seed, eos_token_id=None, bos_token_id=None, pad_token_id=0))


def chi2_pvalue(counts: Counter, probs: dict) -> float:
    """Goodness of fit; outcomes with expected count < 5 are pooled into one bin."""
    n = sum(counts.values())
    assert set(counts) <= set(probs), set(counts) - set(probs)
    big = [x for x in probs if probs[x] * n >= 5]
    small = [x for x in probs if probs[x] * n < 5]
    obs = [counts.get(x, 0) for x in big]
    exp = [probs[x] * n for x in big]
    if small:
        obs.append(sum(counts.get(x, 0) for x in small))
        exp.append(sum(probs[x] for x in small) * n)
    exp = np.array(exp) * n / sum(exp)
    return float(stats.chisquare(obs, exp).pvalue)


def test_k1_tempered_matches_logit_temperature():
    """K = 1: P^(1/T)/Z on single tokens IS logit temperature. Both histograms fit the exact
    distribution (chi-square p > 1e-3), agree with each other (two-sample chi-square p > 1e-3), and
    their TV distance is below 0.06 at 3000 samples each."""
    rt = small_runtime(0)
    T, n = 0.5, 3000
    exact = tempered_distribution(chunk_distribution(rt, PROMPT, 1), T)
    cmp = compare(rt, PROMPT, 1, T, n, seed=0, block=1024)
    assert sum(cmp.tempered.values()) == sum(cmp.logit.values()) == n
    assert chi2_pvalue(cmp.tempered, exact) > 1e-3
    assert chi2_pvalue(cmp.logit, exact) > 1e-3
    keys = sorted(set(cmp.tempered) | set(cmp.logit))
    table = np.array([[cmp.tempered.get(k, 0) for k in keys], [cmp.logit.get(k, 0) for k in keys]])
    assert stats.chi2_contingency(table).pvalue > 1e-3
    assert cmp.tv < 0.06
    assert cmp.calls_per_sample > 1


def test_k1_fractional_temperature_factory_path():
    """1/T = 2.5 (Stage-2 Bernoulli factory): still P^(1/T)/Z (chi-square p > 1e-3, 1500 samples)."""
    rt = small_runtime(0)
    T = 0.4
    exact = tempered_distribution(chunk_distribution(rt, PROMPT, 1), T)
    rs = temper_many(ChunkSampler(rt, PROMPT, 1, seed=3), T, 1500, vectorized=True, seed=3)
    assert "exact-factory" in {r.path for r in rs}
    assert chi2_pvalue(Counter(r.outcome for r in rs), exact) > 1e-3


def test_k2_matches_exact_joint_tempering():
    """K = 2 on V = 6: enumerate all 36 chunks' P from the logits, form P^(1/T)/Z (T = 1/2), and
    check temper's histogram against it (chi-square p > 1e-3, 2000 samples). Logit temperature
    gives a different distribution here (exact TV between the two > 0.02)."""
    rt = small_runtime(1)
    T, n = 0.5, 2000
    P = chunk_distribution(rt, PROMPT, 2)
    assert len(P) == 36 and math.isclose(sum(P.values()), 1.0, rel_tol=1e-9)
    joint = tempered_distribution(P, T)
    rs = temper_many(ChunkSampler(rt, PROMPT, 2, seed=1, block=1024), T, n, vectorized=True, seed=1)
    counts = Counter(r.outcome for r in rs)
    assert all(len(c) == 2 for c in counts)
    assert chi2_pvalue(counts, joint) > 1e-3
    # Per-token (logit) tempering of the same model, exactly: q(a) q(b | a), each tempered alone.
    P1 = {c[0]: p for c, p in chunk_distribution(rt, PROMPT, 1).items()}
    q1 = tempered_distribution(P1, T)
    per_token = {}
    for a in P1:
        q2 = tempered_distribution({c[1]: p / P1[a] for c, p in P.items() if c[0] == a}, T)
        per_token.update({(a, b): q1[a] * q for b, q in q2.items()})
    assert total_variation(joint, per_token) > 0.02
    # ... and our sampled logit-tempered chunks fit the per-token distribution, not necessarily joint.
    assert chi2_pvalue(Counter(logit_tempered(rt, PROMPT, 2, T, 2000, seed=2)), per_token) > 1e-3


def test_chunk_distribution_top_and_eos():
    rt = HFRuntime(tiny_llama(vocab_size=8, seed=0, eos_token_id=2))   # EOS = 2 ends a chunk early
    P = chunk_distribution(rt, PROMPT, 2)
    assert math.isclose(sum(P.values()), 1.0, rel_tol=1e-9)
    assert (2,) in P and len(P) == 7 * 8 + 1
    part = chunk_distribution(rt, PROMPT, 2, top=2)
    assert len(part) <= 4 and sum(part.values()) < 1
    s = ChunkSampler(rt, PROMPT, 2, seed=0)
    draws = s(400)
    assert all(len(c) == 2 or c == (2,) for c in draws)


def test_reproducible_with_seed():
    rt = small_runtime(0)
    a = ChunkSampler(rt, PROMPT, 2, seed=7, block=16)
    b = ChunkSampler(rt, PROMPT, 2, seed=7, block=16)
    da, db = a(40) + a(5), b(40) + b(5)
    assert da == db and a.blocks == 4 and a.calls == 45 and sum(a.counts.values()) == 45
    assert a(40) != da[:40]                  # fresh seeds per block: not a replay
    c = ChunkSampler(rt, PROMPT, 2, seed=8, block=16)
    assert c(40) != da[:40]
    ra = temper_many(ChunkSampler(rt, PROMPT, 2, seed=5), 0.5, 20, vectorized=True, seed=5)
    rb = temper_many(ChunkSampler(rt, PROMPT, 2, seed=5), 0.5, 20, vectorized=True, seed=5)
    assert ra == rb
    assert logit_tempered(rt, PROMPT, 2, 0.7, 30, seed=1) == logit_tempered(rt, PROMPT, 2, 0.7, 30, seed=1)


def test_batch_method_runs():
    rt = small_runtime(1)
    cmp = compare(rt, PROMPT, 2, 1 / 3, 30, method="batch", batch_size=50, seed=0)
    assert cmp.calls_per_sample == 50 and sum(cmp.tempered.values()) == 30
    assert 0 <= cmp.tv <= 1


@pytest.mark.parametrize("call, match", [
    (lambda rt: ChunkSampler(rt, PROMPT, 0), "chunk_tokens"),
    (lambda rt: ChunkSampler(rt, PROMPT, 1.5), "chunk_tokens"),
    (lambda rt: ChunkSampler(rt, PROMPT, 2, block=0), "block"),
    (lambda rt: ChunkSampler(rt, PROMPT, 2, seed=-1), "seed"),
    (lambda rt: ChunkSampler(rt, [], 2), "no tokens"),
    (lambda rt: ChunkSampler(rt, [1, 99], 2), "token ids"),
    (lambda rt: ChunkSampler(rt, "text", 2), "tokenizer"),
    (lambda rt: ChunkSampler(rt, None, 2), "prompt"),
    (lambda rt: ChunkSampler(rt, PROMPT, 300), "max_context"),
    (lambda rt: ChunkSampler(rt, PROMPT, 2)(0), "k must"),
    (lambda rt: compare(rt, PROMPT, 1, 1.5, 10), "temperature"),
    (lambda rt: compare(rt, PROMPT, 1, 0.4, 10, method="batch"), "integer 1/T"),
    (lambda rt: compare(rt, PROMPT, 1, 0.5, 10, method="nope"), "method"),
    (lambda rt: compare(rt, PROMPT, 1, 0.5, 0), "samples"),
    (lambda rt: logit_tempered(rt, PROMPT, 1, -1.0, 10), "temperature"),
    (lambda rt: tempered_distribution({}, 0.5), "mass"),
])
def test_bad_input(call, match):
    rt = small_runtime(0)
    with pytest.raises(TemperanceError, match=match):
        call(rt)


def _cli(monkeypatch, argv):
    from temperance import models

    rt = HFRuntime(tiny_llama(seed=0), hf_tokenizer())
    monkeypatch.setattr(models, "load", lambda name, threads=None, **kw: rt)
    ap = argparse.ArgumentParser()
    add_parser(ap.add_subparsers(dest="command"))
    args = ap.parse_args(["implicit", "--model", "tiny"] + argv)
    return args.func(args)


def test_cli_exact(monkeypatch, capsys):
    assert _cli(monkeypatch, ["--prompt", "hello", "-K", "1", "-T", "0.5", "--samples", "5", "--seed", "0",
                              "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "calls per sample (measured" in out and "Theorem 2" in out and "ESTIMATE" in out
    assert "continuation" in out and "freq" in out


def test_cli_batch(monkeypatch, capsys):
    assert _cli(monkeypatch, ["--prompt", "hello", "--method", "batch", "--batch-size", "20", "-T", "0.333",
                              "--samples", "3", "--seed", "0", "--chat"]) == 0
    assert "fixed cost N = 20" in capsys.readouterr().out
    assert _cli(monkeypatch, ["--prompt", "hello", "--method", "batch", "--batch-size", "20", "-T", "1/2",
                              "--samples", "2", "--seed", "0"]) == 0


@pytest.mark.parametrize("argv, match", [
    (["--prompt", "hi", "-T", "1.5"], "temperature"),
    (["--prompt", "hi", "-T", "0"], "temperature"),
    (["--prompt", "hi", "--samples", "0"], "samples"),
    (["--prompt", "hi", "-K", "0"], "chunk-tokens"),
    (["--prompt", ""], "empty"),
    (["--prompt", "hi", "--method", "batch", "-T", "0.4"], "integer 1/T"),
])
def test_cli_bad_input(monkeypatch, argv, match):
    with pytest.raises(TemperanceError, match=match):
        _cli(monkeypatch, argv)


def test_cli_unknown_model_is_temperance_error():
    ap = argparse.ArgumentParser()
    add_parser(ap.add_subparsers(dest="command"))
    args = ap.parse_args(["implicit", "--prompt", "hi", "--model", "/nonexistent/model/dir"])
    with pytest.raises(TemperanceError, match="no model"):
        args.func(args)


@pytest.mark.slow
def test_smollm2_k2_runs():
    from conftest_runtime_helpers import smollm2_runtime

    rt = smollm2_runtime()
    cmp = compare(rt, "The capital of France is", 2, 0.5, 5, seed=0, block=128)
    assert sum(cmp.tempered.values()) == 5 and cmp.calls_per_sample >= 2

"""Likelihood-free temperature (CALM, algorithms.md §1): exactness, cost, batch mode, edge cases.

Statistical tests use fixed seeds, so they are deterministic; each states its bound. Histograms are
checked with a chi-square goodness-of-fit test (bins with expected count < 5 pooled), failing below
``P_MIN``; a companion test shows the same check rejects a wrong distribution.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy import stats

from temperance.implicit import (BudgetExceeded, Tempered, _pick, collision_weights, expected_calls,
                                 temper, temper_many)

P_MIN = 1e-3                                   # chi-square p-value below which a histogram fails
TOY = np.array([0.5, 0.3, 0.15, 0.05])
ZIPF = 1.0 / np.arange(1, 51)
ZIPF /= ZIPF.sum()                             # 50-outcome Zipf, exponent 1
TEMPS = [0.9, 0.7, 0.5, 0.4, 1 / 3, 0.25]


def target(P, T):
    q = np.asarray(P, dtype=np.float64) ** (1 / T)
    return q / q.sum()


def categorical(P, seed, vectorized=True):
    """A numpy black box drawing outcome ids from P: ``sample(k)`` or ``sample()``."""
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(P)
    cdf[-1] = 1.0
    if vectorized:
        return lambda k: np.searchsorted(cdf, rng.random(k), side="right")
    return lambda: int(np.searchsorted(cdf, rng.random(), side="right"))


def chisquare_p(outcomes, probs):
    """Chi-square goodness-of-fit p-value of integer outcomes against probs, small bins pooled."""
    probs = np.asarray(probs, dtype=np.float64)
    obs = np.bincount(outcomes, minlength=len(probs)).astype(np.float64)
    assert len(obs) == len(probs), "an outcome outside the support"
    exp = probs * len(outcomes)
    order = np.argsort(-exp)
    obs, exp = obs[order], exp[order]
    big = exp >= 5
    o, e = list(obs[big]), list(exp[big])
    if not big.all():
        o.append(obs[~big].sum())
        e.append(exp[~big].sum())
        if e[-1] < 5:                          # pooled tail still small: fold into the last big bin
            tail_o, tail_e = o.pop(), e.pop()
            o[-1] += tail_o
            e[-1] += tail_e
    if len(e) < 2:
        return 1.0
    return stats.chisquare(o, e).pvalue


def tv(outcomes, probs):
    emp = np.bincount(outcomes, minlength=len(probs)) / len(outcomes)
    return 0.5 * np.abs(emp - probs).sum()


# ----------------------------------------------------------------------------------------------
# Exactness (Theorem 1)


@pytest.mark.parametrize("T", TEMPS, ids=lambda T: f"T={T:.3g}")
@pytest.mark.parametrize("name, P, n", [("toy", TOY, 4000), ("zipf50", ZIPF, 3000)])
def test_exact_matches_tempered_distribution(name, P, n, T):
    rs = temper_many(categorical(P, seed=11), T, n, vectorized=True, seed=12)
    assert chisquare_p([r.outcome for r in rs], target(P, T)) > P_MIN
    integer = math.isclose(1 / T, round(1 / T))
    assert {r.path for r in rs} == {"exact-collision" if integer else "exact-factory"}


def test_chisquare_check_can_fail():
    # The same check rejects (a) the untempered P, (b) batch mode's known flattening at small N.
    rs = temper_many(categorical(TOY, seed=1), 0.5, 4000, vectorized=True, seed=2)
    assert chisquare_p([r.outcome for r in rs], TOY) < 1e-6
    rs = temper_many(categorical(TOY, seed=3), 1 / 3, 4000, method="batch", batch_size=5,
                     vectorized=True, seed=4)
    assert chisquare_p([r.outcome for r in rs], target(TOY, 1 / 3)) < 1e-6


@pytest.mark.parametrize("T", [0.5, 0.7], ids=lambda T: f"T={T}")
def test_black_box_matches_logit_temperature(T):
    logits = np.random.default_rng(5).normal(size=12) * 1.5

    def softmax(x):
        e = np.exp(x - x.max())
        return e / e.sum()

    box = categorical(softmax(logits), seed=6, vectorized=False)   # draws only, one at a time
    rs = temper_many(box, T, 3000, seed=7)
    assert chisquare_p([r.outcome for r in rs], softmax(logits / T)) > P_MIN


def test_blocks_and_single_draws_give_identical_results():
    # sample(k) and k calls of sample() read the same uniform stream; leftovers carry over in order.
    for T in (0.4, 1 / 3):
        one = temper_many(categorical(TOY, seed=8, vectorized=False), T, 300, seed=9)
        blk = temper_many(categorical(TOY, seed=8), T, 300, vectorized=True, seed=9, block_size=64)
        assert one == blk
    assert temper_many(categorical(TOY, 8), 0.7, 50, vectorized=True, seed=1) == \
        temper_many(categorical(TOY, 8), 0.7, 50, vectorized=True, seed=1)
    kw = dict(method="batch", batch_size=150, seed=3)                # batches straddle the blocks
    assert temper_many(categorical(TOY, 8, vectorized=False), 0.5, 40, **kw) == \
        temper_many(categorical(TOY, 8), 0.5, 40, vectorized=True, block_size=100, **kw)


# ----------------------------------------------------------------------------------------------
# Cost (Theorem 2)


@pytest.mark.parametrize("T", TEMPS, ids=lambda T: f"T={T:.3g}")
def test_cost_matches_theorem_2_when_all_stage1_draws_are_made(T):
    rs = temper_many(categorical(TOY, seed=21), T, 10000, vectorized=True, seed=22, early_exit=False)
    mean = np.mean([r.calls for r in rs])
    assert mean == pytest.approx(expected_calls(TOY, T), rel=0.05)


@pytest.mark.parametrize("T", TEMPS, ids=lambda T: f"T={T:.3g}")
def test_early_exit_costs_what_we_predict_and_less_from_n_3(T):
    rs = temper_many(categorical(TOY, seed=23), T, 10000, vectorized=True, seed=24)
    mean = np.mean([r.calls for r in rs])
    predicted = expected_calls(TOY, T, early_exit=True)
    assert mean == pytest.approx(predicted, rel=0.05)
    theorem2 = expected_calls(TOY, T)
    if math.floor(1 / T + 1e-9) >= 3:          # the first two Stage-1 draws are always made
        assert mean < 0.9 * theorem2
    else:
        assert predicted == pytest.approx(theorem2)


def test_expected_calls_closed_forms():
    assert expected_calls([1.0], 1.0) == 1.0
    assert expected_calls([1.0], 0.5) == 2.0
    assert expected_calls([1.0], 0.4) == 3.0                      # n = 2, alpha = 1/2
    assert expected_calls([0.25] * 4, 1 / 3) == pytest.approx(3 * 16)  # Z = 4 * 4^-3
    assert expected_calls([0.25] * 4, 1 / 3, early_exit=True) == pytest.approx((1 + 1 + 0.25) * 16)
    with pytest.raises(ValueError, match="probs"):
        expected_calls([0.5, 0.6], 0.5)


# ----------------------------------------------------------------------------------------------
# Batch mode (Algorithm 2, Theorem 3)


def test_batch_weights_paper_example():
    batch = list("ACADBEAFBG")
    assert collision_weights(Counter(batch), 2) == (2, {"A": 3, "B": 1})
    rs = temper_many(itertools.cycle(batch).__next__, 0.5, 4000, method="batch", batch_size=10, seed=3)
    assert {(r.path, r.order, r.calls) for r in rs} == {("batch", 2, 10)}
    a = sum(r.outcome == "A" for r in rs)
    assert a + sum(r.outcome == "B" for r in rs) == 4000
    assert stats.binomtest(a, 4000, 0.75).pvalue > P_MIN
    assert stats.binomtest(a, 4000, 0.70).pvalue < 1e-6          # the test can fail


def test_batch_fallback_when_nothing_repeats():
    assert collision_weights({"A": 1, "B": 1, "C": 1}, 3) == (1, {"A": 1, "B": 1, "C": 1})
    assert collision_weights({"A": 2, "B": 1, "C": 1}, 3) == (2, {"A": 1})
    fresh = itertools.count().__next__                            # every draw is new
    rs = temper_many(fresh, 1 / 3, 3000, method="batch", batch_size=10, seed=5)
    assert {(r.path, r.order) for r in rs} == {("batch-fallback", 1)}
    slot = [r.outcome - 10 * i for i, r in enumerate(rs)]          # position inside its own batch
    assert chisquare_p(slot, np.full(10, 0.1)) > P_MIN             # uniform pick = a T = 1 draw
    with pytest.warns(RuntimeWarning, match="batch_size=2"):
        r = temper(categorical(TOY, 1), 0.25, method="batch", batch_size=2, vectorized=True)
    assert r.order <= 2 and r.path == "batch-fallback"


def test_batch_tv_shrinks_as_n_grows():
    P = np.array([0.4, 0.25, 0.15, 0.10, 0.05, 0.03, 0.02])
    T = 1 / 3
    dist = []
    for N in (5, 20, 100):
        rs = temper_many(categorical(P, seed=N), T, 6000, method="batch", batch_size=N,
                         vectorized=True, seed=N + 1)
        dist.append(tv([r.outcome for r in rs], target(P, T)))
    assert dist[0] > dist[1] > dist[2]
    assert dist[0] > 0.15 and dist[2] < 0.04          # algorithms.md §1.3: 0.216 / 0.080 / 0.021


def test_batch_weights_are_exact_big_integers():
    m, w = collision_weights({"a": 2000, "b": 1000}, 10)
    assert m == 10 and w == {"a": math.comb(2000, 10), "b": math.comb(1000, 10)}
    assert w["a"] > 2 ** 64 and all(type(v) is int for v in w.values())
    rng = np.random.default_rng(0)
    W = 3 ** 60                                        # > 2^63: the exact big-integer draw
    picks = [_pick({"x": 2 * W, "y": W, "z": W + 1}, rng) for _ in range(4000)]
    c = Counter(picks)
    assert chisquare_p([("x", "y", "z").index(p) for p in picks], [0.5, 0.25, 0.25]) > P_MIN
    assert c["y"] > 0 and c["z"] > 0


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 30), min_size=1, max_size=8), st.integers(1, 12))
def test_batch_weights_cascade_property(counts, order):
    m, w = collision_weights(dict(enumerate(counts)), order)
    assert m == min(order, max(counts))                # the largest order some outcome reaches
    assert w == {i: math.comb(c, m) for i, c in enumerate(counts) if c >= m}


def test_experimental_weights():
    m, w = collision_weights({"a": 7, "b": 3, "c": 1}, 3, "falling")
    assert m == 3 and set(w) == {"a", "b"}
    assert w["a"] / w["b"] == pytest.approx(math.comb(7, 3) / math.comb(3, 3))
    assert collision_weights({"a": 1, "b": 1}, 2.5, "falling")[0] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="integer 1/T"):
        temper(categorical(TOY, 1), 0.7, method="batch", vectorized=True)
    for rule in ("falling", "power"):
        rs = temper_many(categorical(TOY, 2), 0.7, 3000, method="batch", batch_size=400,
                         vectorized=True, weights=rule, seed=3)
        assert tv([r.outcome for r in rs], target(TOY, 0.7)) < 0.04
    hot = temper_many(categorical(TOY, 4), 2.0, 2000, method="batch", batch_size=400,
                      vectorized=True, weights="power", seed=5)     # heating: batch + power only
    assert tv([r.outcome for r in hot], target(TOY, 2.0)) < 0.04


# ----------------------------------------------------------------------------------------------
# Edge cases


@pytest.mark.parametrize("T", [0.9, 0.5, 0.4, 1 / 3, 0.3])
def test_degenerate_distribution(T):
    n = math.floor(1 / T + 1e-9)
    frac = not math.isclose(1 / T, round(1 / T))
    for early_exit in (True, False):
        rs = temper_many(lambda: "x", T, 20, early_exit=early_exit)
        assert {(r.outcome, r.calls, r.trials) for r in rs} == {("x", n + frac, 1)}
    if not frac:
        r = temper(lambda: "x", T, method="batch", batch_size=7)
        assert (r.outcome, r.path, r.order, r.calls) == ("x", "batch", n, 7)


def test_temperature_one_is_one_call():
    calls = itertools.count()
    box = lambda: next(calls)
    for method in ("exact", "batch"):
        r = temper(box, 1.0, method=method)
        assert r.path == "single" and r.calls == 1
    assert next(calls) == 2


def test_fraction_temperature_is_exact():
    r = temper(categorical(TOY, 1), Fraction(1, 3), vectorized=True, seed=0)
    assert r.path == "exact-collision"
    assert temper(categorical(TOY, 1), 1 / 3, method="batch", vectorized=True).order == 3


def test_unhashable_outcomes_raise_type_error():
    with pytest.raises(TypeError, match="unhashable outcome of type list"):
        temper(lambda: [1, 2], 0.5)
    with pytest.raises(TypeError, match="unhashable"):
        temper(lambda k: [[1, 2]] * k, 0.5, method="batch", vectorized=True)
    rows = np.array([[1, 2], [3, 4], [1, 2], [1, 2]])          # [k, K] arrays: rows become tuples
    r = temper(lambda k: rows[:k] if k <= 4 else np.tile(rows, (k // 4 + 1, 1))[:k], 0.5,
               method="batch", batch_size=4, vectorized=True)
    assert r.outcome == (1, 2)


def test_sampler_errors_surface():
    def flaky():
        if next(calls) == 3:
            raise RuntimeError("model crashed")
        return 0 if next(coin) else 1

    for method in ("exact", "batch"):
        calls, coin = itertools.count(), itertools.cycle([0, 1])
        with pytest.raises(RuntimeError, match="model crashed"):
            temper(flaky, 0.5, method=method)

    def broken(k):
        raise OSError("device lost")

    with pytest.raises(OSError, match="device lost"):
        temper(broken, 0.25, vectorized=True)
    with pytest.raises(ValueError, match="asked for"):
        temper(lambda k: [0] * (k + 1), 0.5, vectorized=True)


def test_budget_raise():
    calls = itertools.count()
    fresh = lambda: next(calls)                                   # never collides: never accepts
    with pytest.raises(BudgetExceeded, match="max_calls=50") as e:
        temper(fresh, 0.5, max_calls=50)
    assert e.value.calls == 50 and next(calls) == 50
    drawn = []

    def blocks(k):
        drawn.append(k)
        return list(range(sum(drawn) - k, sum(drawn)))

    with pytest.raises(BudgetExceeded):
        temper(blocks, 0.25, max_calls=77, vectorized=True)
    assert sum(drawn) == 77                                       # blocks never overrun the budget
    with pytest.raises(ValueError, match="max_calls=5 is below batch_size=200"):
        temper(fresh, 0.5, method="batch", max_calls=5)


def test_budget_falls_back_to_batch():
    calls = itertools.count()
    r = temper(lambda: next(calls), 0.5, max_calls=50, on_budget="batch", seed=1)
    assert (r.path, r.calls, r.order) == ("budget-batch", 50, 1) and 0 <= r.outcome < 50
    # Trials (A,B), (B,A), ... never collide, but the 50 draws hold 25 A and 25 B: order 2.
    abba = itertools.cycle("ABBA").__next__
    rs = temper_many(abba, 0.5, 400, max_calls=50, on_budget="batch", seed=2)
    assert {(r.path, r.order) for r in rs} == {("budget-batch", 2)}
    assert stats.binomtest(sum(r.outcome == "A" for r in rs), 400, 0.5).pvalue > P_MIN
    r = temper(lambda: next(calls), 0.4, max_calls=20, on_budget="batch", seed=3)
    assert r.path == "budget-batch" and r.order == pytest.approx(0.5)   # falling weights, 2.5 -> 0.5
    r = temper(categorical(TOY, 1), 0.5, method="batch", max_calls=30, on_budget="batch",
               vectorized=True)
    assert (r.path, r.calls) == ("budget-batch", 30)
    r = temper(categorical(TOY, 1), 0.5, max_calls=10 ** 6, on_budget="batch", vectorized=True)
    assert r.path == "exact-collision"                           # budget not reached


@pytest.mark.parametrize("T, words", [
    (1.5, ["temperature", "1.5", "(0, 1]", "heating", "unbounded", "temperance.ops.temperature"]),
    (float("inf"), ["temperature", "inf", "(0, 1]", "heating"]),
    (0, ["temperature", "got 0", "(0, 1]", "greedy", "mode", "argmax"]),
    (-0.5, ["temperature", "-0.5", "(0, 1]", "negative"]),
    (float("nan"), ["temperature", "nan"]),
    ("0.5", ["temperature", "real number"]),
])
def test_temperature_errors(T, words):
    with pytest.raises(ValueError) as e:
        temper(lambda: 0, T)
    for w in words:
        assert w in str(e.value)
    with pytest.raises(ValueError, match="heating"):
        temper(lambda: 0, 2.0, method="exact", weights="power")     # exact mode never heats


@pytest.mark.parametrize("kw, words", [
    (dict(method="greedy"), "method must be one of"),
    (dict(batch_size=0), "batch_size must be an integer >= 1, got 0"),
    (dict(max_calls=0), "max_calls must be an integer >= 1 or None, got 0"),
    (dict(on_budget="ignore"), "on_budget must be one of"),
    (dict(weights="log"), "weights must be one of"),
])
def test_argument_errors_name_the_parameter(kw, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(")):
        temper(lambda: 0, 0.5, **kw)


def test_temper_many_zero_and_result_type():
    assert temper_many(lambda: 0, 0.5, 0) == []
    r = temper(lambda: 0, 0.5)
    assert isinstance(r, Tempered) and r == Tempered(0, 2, "exact-collision", 1, None)
    with pytest.raises(AttributeError):
        r.outcome = 1                                             # frozen

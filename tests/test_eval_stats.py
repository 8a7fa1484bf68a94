"""temperance.eval.stats: intervals, paired tests, Holm and Best-of-N against brute force."""

import itertools
import math

import numpy as np
import pytest

from temperance.eval import stats


def test_bootstrap_ci_covers_the_mean_and_shrinks():
    rng = np.random.default_rng(1)
    small, big = rng.normal(0.5, 1, 20), rng.normal(0.5, 1, 2000)
    m, lo, hi = stats.bootstrap_ci(small)
    assert lo < m < hi and m == pytest.approx(small.mean())
    _, lo2, hi2 = stats.bootstrap_ci(big)
    assert hi2 - lo2 < (hi - lo) / 4 and lo2 < 0.5 < hi2
    assert stats.bootstrap_ci([1.0, math.nan, 3.0])[0] == 2.0       # NaN prompts are dropped
    assert stats.bootstrap_ci([2.0]) == (2.0, 2.0, 2.0)


def test_paired_test_uses_the_pairing():
    rng = np.random.default_rng(2)
    base = rng.normal(0, 5, 50)                 # large between-prompt variance ...
    a, b = base + 0.3, base + rng.normal(0, 0.1, 50)   # ... a small, consistent shift
    t = stats.paired_test(a, b)
    assert t["p"] < 0.01 and t["lo"] > 0 and t["diff"] == pytest.approx(np.mean(a - b))
    assert stats.bootstrap_ci(a)[1] < stats.bootstrap_ci(b)[2]   # unpaired intervals overlap
    null = stats.paired_test(base + rng.normal(0, 1, 50), base + rng.normal(0, 1, 50))
    assert null["p"] > 0.05 and null["lo"] < 0 < null["hi"]
    assert stats.paired_test([1, 1], [1, 1])["p"] == 1.0
    with pytest.raises(ValueError):
        stats.paired_test([1, 2], [1])


def test_holm_matches_hand_computation():
    # sorted p: .01 (x3 = .03), .03 (x2 = .06), .04 (x1 -> max(.06, .04) = .06)
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    out = stats.holm([math.nan, 0.02])
    assert math.isnan(out[0]) and out[1] == pytest.approx(0.02)


def test_best_of_n_is_the_exact_expected_max():
    rng = np.random.default_rng(3)
    m = rng.random((6, 9))
    n, curve = stats.best_of_n(m)
    means = m.mean(1)
    for N in range(1, 7):
        brute = np.mean([max(means[list(s)]) for s in itertools.combinations(range(6), N)])
        assert curve[N - 1] == pytest.approx(brute)
    assert list(n) == [1, 2, 3, 4, 5, 6] and np.all(np.diff(curve) >= -1e-12)
    ci = stats.best_of_n_ci(m, b=200)
    assert all(lo <= c + 1e-12 and c <= hi + 1e-12 for lo, c, hi in zip(ci["lo"], ci["mean"], ci["hi"]))

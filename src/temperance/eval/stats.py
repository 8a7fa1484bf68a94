"""The protocol of the min-p critique: bootstrap intervals, paired tests, Holm, Best-of-N.

All statistics resample **prompts** (the unit that varies between runs of an evaluation; samples
and seeds are averaged within a prompt first). Inputs are per-prompt values, ``[P]`` for one
configuration or ``[C, P]`` for C configurations over the same P prompts. Prompts whose value is
NaN for some configuration (a metric undefined there) are dropped for that comparison.

- `bootstrap_ci`: mean and percentile interval of the mean over prompts (B resamples).
- `paired_test`: the mean difference of two configurations over the same prompts, its paired
  bootstrap interval and a two-sided bootstrap p-value ``min(1, 2 * min(P*(d <= 0), P*(d >= 0)))``:
  the share of resampled mean differences on the far side of zero, doubled (a percentile test).
  Pairing matters: configurations share seeds per (prompt, sample) (common random numbers), so the
  difference has far less variance than either mean.
- `holm`: Holm's step-down adjustment of m p-values (controls the family-wise error rate).
- `best_of_n`: the critique's budget curve. A family with C configurations (its temperatures x
  knob values) is given N of them at random and keeps the best; the curve is the expected best
  as a function of N. With the configurations' means sorted ascending ``v_(1) <= ... <= v_(C)``,
  ``E[max of a random N-subset] = sum_j v_(j) * C(j-1, N-1) / C(C, N)`` exactly (no sampling, unlike
  the critique's 31-150 random draws). N = 1 is the mean over the grid (small-budget robustness),
  N = C the peak. The interval resamples prompts and recomputes the whole curve.

Like the critique, the best configuration is chosen on the same prompts it is scored on, so the
peak is optimistic; the comparison between families at equal N is fair (each gets N tries).

>>> import numpy as np
>>> best_of_n(np.array([[0.0, 0.0], [1.0, 1.0], [0.5, 0.5]]))[1]   # N=1: mean; N=3: max
array([0.5       , 0.83333333, 1.        ])
>>> [round(p, 3) for p in holm([0.01, 0.04, 0.03])]
[0.03, 0.06, 0.06]
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = ["bootstrap_ci", "paired_test", "holm", "best_of_n", "best_of_n_ci", "B", "ALPHA"]

B = 2000      # bootstrap resamples
ALPHA = 0.05  # 95% intervals


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _clean(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x[np.isfinite(x)]


def bootstrap_ci(values: Sequence[float], *, b: int = B, alpha: float = ALPHA, seed: int = 0
                 ) -> tuple[float, float, float]:
    """``(mean, lo, hi)`` over the finite values; a single value gives a zero-width interval."""
    x = _clean(values)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    m = float(x.mean())
    if x.size == 1:
        return m, m, m
    idx = _rng(seed).integers(0, x.size, size=(b, x.size))
    means = x[idx].mean(1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return m, float(lo), float(hi)


def paired_test(a: Sequence[float], b_: Sequence[float], *, b: int = B, alpha: float = ALPHA,
                seed: int = 0) -> dict:
    """Mean of ``a - b`` over prompts where both are finite, its interval and p-value."""
    a, b_ = np.asarray(a, dtype=np.float64), np.asarray(b_, dtype=np.float64)
    if a.shape != b_.shape:
        raise ValueError(f"paired_test needs the same prompts: got {a.shape} and {b_.shape}")
    ok = np.isfinite(a) & np.isfinite(b_)
    d = a[ok] - b_[ok]
    if d.size == 0:
        return {"diff": math.nan, "lo": math.nan, "hi": math.nan, "p": math.nan, "n": 0}
    if d.size == 1 or np.all(d == d[0]):
        p = 1.0 if d[0] == 0 else 0.0
        return {"diff": float(d.mean()), "lo": float(d.mean()), "hi": float(d.mean()), "p": p, "n": int(d.size)}
    idx = _rng(seed).integers(0, d.size, size=(b, d.size))
    means = d[idx].mean(1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    p = min(1.0, 2 * min(float((means <= 0).mean()), float((means >= 0).mean())))
    return {"diff": float(d.mean()), "lo": float(lo), "hi": float(hi), "p": p, "n": int(d.size)}


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the input order (NaN stays NaN)."""
    p = np.asarray(pvalues, dtype=np.float64)
    ok = np.flatnonzero(np.isfinite(p))
    out = np.full(p.shape, np.nan)
    m = ok.size
    running = 0.0
    for rank, i in enumerate(ok[np.argsort(p[ok], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def _curve(means: np.ndarray) -> np.ndarray:
    """Expected max of a random N-subset of `means` [C], for N = 1..C (exact)."""
    v = np.sort(means)
    C = v.size
    out = np.empty(C)
    for N in range(1, C + 1):
        # P(the max of the subset is v_(j)) = C(j-1, N-1) / C(C, N), j = 1..C (1-based)
        w = np.array([math.comb(j - 1, N - 1) for j in range(1, C + 1)], dtype=np.float64)
        out[N - 1] = float((w * v).sum() / math.comb(C, N))
    return out


def best_of_n(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(N, curve)`` for a family's ``[C, P]`` per-prompt quality (prompts with NaN dropped)."""
    m = np.asarray(matrix, dtype=np.float64)
    m = m[:, np.all(np.isfinite(m), axis=0)]
    if m.size == 0:
        return np.arange(1, matrix.shape[0] + 1), np.full(matrix.shape[0], np.nan)
    return np.arange(1, m.shape[0] + 1), _curve(m.mean(1))


def best_of_n_ci(matrix: np.ndarray, *, b: int = 500, alpha: float = ALPHA, seed: int = 0
                 ) -> dict[str, list[float]]:
    """The Best-of-N curve with a prompt-bootstrap interval at each N."""
    m = np.asarray(matrix, dtype=np.float64)
    m = m[:, np.all(np.isfinite(m), axis=0)]
    C, P = m.shape
    n, curve = best_of_n(m)
    if P < 2:
        return {"n": n.tolist(), "mean": curve.tolist(), "lo": curve.tolist(), "hi": curve.tolist()}
    idx = _rng(seed).integers(0, P, size=(b, P))
    curves = np.stack([_curve(m[:, row].mean(1)) for row in idx])
    lo, hi = np.quantile(curves, [alpha / 2, 1 - alpha / 2], axis=0)
    return {"n": n.tolist(), "mean": curve.tolist(), "lo": lo.tolist(), "hi": hi.tolist()}

"""Temperature sampling from a black-box sampler: no logits, no probabilities, only draws.

Given only ``sample()``, which returns i.i.d. draws from an unknown discrete distribution ``P``, draw
from the sharpened distribution ``P_T(x) = P(x)^(1/T) / Z_T`` with ``0 < T <= 1``. Write
``1/T = n + alpha`` (``n`` an integer, ``0 <= alpha < 1``):

- **exact** (paper Algorithm 1): draw ``n`` samples; if they are all equal to some ``x`` (a
  *collision*, probability ``P(x)^n``), run a Bernoulli factory that accepts ``x`` with probability
  ``P(x)^alpha`` using only fresh draws and uniforms; otherwise start again. Exact for every real
  ``T`` in ``(0, 1)``; the cost grows as ``T -> 1`` and as ``T -> 0`` (see `expected_calls`).
- **batch** (paper Algorithm 2, what the official code runs): draw ``N`` samples once and pick ``x``
  with weight ``C(count_x, n)``, the number of size-``n`` collisions hidden in the batch, lowering
  ``n`` while nothing repeats ``n`` times. Biased for finite ``N``, consistent as ``N -> inf``, fixed
  cost, only for integer ``1/T``.

Reference: Shao, Li, Meng, Zhou, *Continuous Autoregressive Language Models*, arXiv 2510.27688,
Section 5 (Algorithms 1-2, Theorems 1-3), Appendix A; code ``shaochenze/calm``.

Contract: outcomes are compared by value (``==``) and counted, so they must be hashable (a chunk of
tokens is a tuple, never a list or an array). This module knows nothing about models or tensors: it
depends on the standard library and numpy only (plus the package's stdlib-only ``errors``). Randomness of our own (the factory's uniforms, the
batch pick) comes from one numpy Generator built from ``seed``; the sampler's randomness is its own,
so a run is reproducible when both are seeded. When logits exist, scale them instead
(``temperance.ops.temperature``): that is exact, costs one draw and also heats (``T > 1``).

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> coin = lambda: int(rng.random() < 0.25)          # P = (0.75, 0.25); at T = 1/2, P_T = (0.9, 0.1)
>>> r = temper(coin, 0.5, seed=1)
>>> r.path, r.outcome in (0, 1), r.calls >= 2
('exact-collision', True, True)
>>> draws = temper_many(coin, 0.5, 2000, seed=2)
>>> abs(sum(d.outcome for d in draws) / 2000 - 0.1) < 0.02   # P_T(1) = 0.1 (P(1) = 0.25)
True
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Hashable, Iterable, Mapping, Sequence

import numpy as np

from .errors import TemperanceError

__all__ = ["Tempered", "BudgetExceeded", "temper", "temper_many", "collision_weights", "expected_calls"]

METHODS = ("exact", "batch")
ON_BUDGET = ("raise", "batch")
WEIGHTS = ("binomial", "falling", "power")


@dataclass(frozen=True)
class Tempered:
    """One tempered sample and what it cost.

    ``path`` says how it was produced:

    - ``"single"``: ``T == 1``, one plain draw;
    - ``"exact-collision"``: Algorithm 1, accepted in Stage 1 (integer ``1/T``);
    - ``"exact-factory"``: Algorithm 1, accepted by the Stage-2 Bernoulli factory (fractional ``1/T``);
    - ``"batch"``: Algorithm 2 with collision order ``n = 1/T``;
    - ``"batch-fallback"``: Algorithm 2 after the cascade lowered the order (nothing repeated ``n`` times);
    - ``"budget-batch"``: exact mode ran out of ``max_calls`` and fell back to Algorithm 2 over its draws.

    ``calls`` counts the base-sampler draws this sample consumed (what Theorem 2 counts; a vectorised
    sampler may have produced a few more, kept for the next sample by `temper_many`). ``trials`` is
    the number of Algorithm-1 trials the sample took (0 on every batch path, ``"budget-batch"``
    included). ``order`` is the collision order the batch pick used (``None`` for exact paths).
    """

    outcome: Hashable
    calls: int
    path: str
    trials: int = 0
    order: int | float | None = None


class BudgetExceeded(RuntimeError):
    """Exact sampling used ``max_calls`` draws without accepting (raised when ``on_budget="raise"``)."""

    def __init__(self, message: str, calls: int):
        super().__init__(message)
        self.calls = calls


class _OutOfBudget(Exception):
    """Internal: the current sample reached its call budget."""


# ----------------------------------------------------------------------------------------------
# The base sampler as a stream of draws.


class _Draws:
    """Draws from ``sample``: one call each, or blocks from a vectorised ``sample(k)``.

    A block may hold more draws than one tempered sample needs; the rest stay buffered for the next
    sample. That is safe: each sample stops at a stopping time of an i.i.d. stream, so the draws after
    it are fresh i.i.d. draws, independent of everything returned so far.
    """

    def __init__(self, sample: Callable, vectorized: bool, block_size: int):
        if not callable(sample):
            raise TemperanceError(f"sample must be a callable, got {type(sample).__name__}")
        self.sample, self.vectorized, self.block_size = sample, vectorized, block_size
        self.buf: list = []
        self.pos = 0
        self.used = 0                      # draws handed out, over the stream's life
        self.limit: int | None = None      # value of `used` at which the current budget runs out
        self.want = 1                      # size of the next block (a hint, clipped to block_size)
        self.record: list | None = None    # draws of the current sample, kept for a budget fallback

    def start(self, max_calls: int | None, record: bool, want: int) -> int:
        """Begin a new tempered sample; return the stream position it starts at."""
        self.limit = None if max_calls is None else self.used + max_calls
        self.record = [] if record else None
        self.want = want
        return self.used

    def take(self):
        if self.limit is not None and self.used >= self.limit:
            raise _OutOfBudget
        if self.vectorized:
            if self.pos == len(self.buf):
                self._refill()
            x = self.buf[self.pos]
            self.pos += 1
        else:
            x = self.sample()
            _check_hashable(x)
        self.used += 1
        if self.record is not None:
            self.record.append(x)
        return x

    def take_many(self, k: int) -> list:
        """``k`` draws at once (a batch); slices the buffer instead of ``k`` calls to `take`."""
        if not self.vectorized or self.record is not None:
            return [self.take() for _ in range(k)]
        if self.limit is not None and self.used + k > self.limit:
            raise _OutOfBudget
        out: list = []
        while len(out) < k:
            if self.pos == len(self.buf):
                self._refill()
            j = min(len(self.buf), self.pos + k - len(out))
            out += self.buf[self.pos:j]
            self.used += j - self.pos
            self.pos = j
        return out

    def _refill(self) -> None:
        k = max(1, min(self.want, self.block_size))
        if self.limit is not None:             # buffer empty here, so drawn == used
            k = min(k, self.limit - self.used)
        block = self.sample(k)
        if isinstance(block, np.ndarray):      # [k] scalars or [k, K] rows (token chunks -> tuples)
            block = block.tolist() if block.ndim == 1 else [tuple(row) for row in block.tolist()]
        else:
            block = list(block)
        if len(block) != k:
            raise TemperanceError(f"vectorized sample(k) must return k outcomes: asked for {k}, "
                                  f"got {len(block)}")
        for x in block:
            _check_hashable(x)
        self.buf, self.pos = block, 0
        self.want *= 2                         # unknown cost: grow geometrically (waste < half)


def _check_hashable(x) -> None:
    try:
        hash(x)
    except TypeError:
        raise TypeError(f"sample() returned an unhashable outcome of type {type(x).__name__}: "
                        "outcomes are compared by value and counted, so they must be hashable "
                        "(return a tuple of token ids, not a list or an array)") from None


# ----------------------------------------------------------------------------------------------
# Validation.


def _real(x) -> bool:
    return isinstance(x, (int, float, Fraction, np.floating, np.integer)) and not isinstance(x, bool)


def _split(temperature, *, name: str = "temperature") -> tuple[int, float, bool]:
    """``1/T = n + alpha``; return ``(n, alpha, integer)`` with ``1/T`` snapped to an integer within 1e-9."""
    if not _real(temperature):
        raise TemperanceError(f"{name} must be a real number in (0, 1], got {temperature!r}")
    if math.isnan(temperature):
        raise TemperanceError(f"{name} must be in (0, 1], got nan")
    if temperature <= 0:
        raise TemperanceError(
            f"{name} must be in (0, 1] for a black-box sampler, got {temperature}: "
            + ("T = 0 (greedy) asks for the mode of P, which draws alone only estimate (it is the "
               "limit 1/T -> inf: an infinite collision order); with logits take the argmax "
               "(temperance.ops.temperature with T = 0), with draws only use method='batch' at a "
               "small T = 1/n, which picks among the most repeated outcomes of a batch"
               if temperature == 0 else "a negative temperature has no meaning for sampling"))
    if temperature > 1:
        raise TemperanceError(
            f"{name} must be in (0, 1] for a black-box sampler, got {temperature}: heating (T > 1) "
            "needs an acceptance probability proportional to P(x)^(1/T - 1), which is unbounded as "
            "P(x) -> 0, so no rejection sampler built from draws alone is exact; if the model has "
            "logits, scale them instead (temperance.ops.temperature); method='batch' with "
            "weights='power' or 'falling' is an experimental approximation that heats only the "
            "outcomes seen in the batch")
    inv = 1 / Fraction(temperature) if isinstance(temperature, Fraction) else 1 / float(temperature)
    k = round(inv)
    if math.isclose(inv, k, rel_tol=1e-9):
        return int(k), 0.0, True
    n = math.floor(inv)
    return n, float(inv - n), False


def _check_int(name: str, value, low: int, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        rng = f"an integer >= {low}" + (" or None" if allow_none else "")
        raise TemperanceError(f"{name} must be {rng}, got {value!r}")


def _check_choice(name: str, value, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise TemperanceError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


# ----------------------------------------------------------------------------------------------
# Algorithm 2's weights and the pick.


def collision_weights(counts: Mapping[Hashable, int], order: float, rule: str = "binomial"
                      ) -> tuple[int | float, dict]:
    """Weight each outcome of a batch by its collisions, lowering the order until one has weight.

    Algorithm 2 (``rule="binomial"``, integer ``order = n = 1/T``): ``w_x = C(count_x, m)`` as exact
    Python ints, for the largest ``m <= n`` at which some ``count_x >= m``. At ``m = 1`` the weights
    are the counts, so the result is never empty for a non-empty batch.

    Experimental, ours (algorithms.md §1.5, not in the paper), for any real ``order = 1/T > 0``:
    ``"falling"`` uses ``Gamma(c+1) / Gamma(c-m+1)`` for ``c >= m`` with the cascade
    ``m = 1/T, 1/T - 1, ...`` while ``m > 0`` (proportional to ``"binomial"`` at integer ``m``);
    ``"power"`` uses ``c^(1/T)`` with no cascade. Both are floats, normalised by the largest weight.
    Both are consistent as the batch grows; both are biased for finite batches.

    Args:
        counts: outcome -> count in the batch (for example a `collections.Counter`).
        order: the collision order ``1/T``.
        rule: ``"binomial"`` (the paper), ``"falling"`` or ``"power"`` (experimental).

    Returns:
        ``(m, weights)``: the order used and outcome -> weight for outcomes with positive weight.

    >>> collision_weights({"A": 3, "C": 1, "D": 1, "B": 2}, 2)   # the paper's worked example
    (2, {'A': 3, 'B': 1})
    >>> collision_weights({"A": 1, "B": 1}, 3)                  # nothing repeats: fall back to m = 1
    (1, {'A': 1, 'B': 1})
    """
    _check_choice("rule", rule, WEIGHTS)
    counts = {x: int(c) for x, c in counts.items() if c > 0}
    if not counts:
        raise TemperanceError("counts must hold at least one outcome with a positive count, got none")
    if rule == "binomial":
        _check_int("order", order, 1)
        for m in range(int(order), 0, -1):
            w = {x: math.comb(c, m) for x, c in counts.items() if c >= m}
            if w:
                return m, w
    if not (isinstance(order, (int, float, Fraction, np.number)) and math.isfinite(order) and order > 0):
        raise TemperanceError(f"order must be a finite number > 0, got {order!r}")
    order = float(order)
    if rule == "power":
        logw = {x: order * math.log(c) for x, c in counts.items()}
        m = order
    else:
        m = order
        while True:
            logw = {x: math.lgamma(c + 1) - math.lgamma(c - m + 1) for x, c in counts.items() if c >= m}
            if logw or m <= 1:         # at m <= 1 every count qualifies
                break
            m -= 1
    top = max(logw.values())
    return m, {x: math.exp(v - top) for x, v in logw.items()}


def _randbelow(rng: np.random.Generator, total: int) -> int:
    """Uniform integer in ``[0, total)``, exact for Python ints of any size."""
    if total <= 1 << 62:
        return int(rng.integers(total))
    bits = total.bit_length()
    words = (bits + 31) // 32
    while True:                        # rejection: accepts with probability > 1/2
        r = 0
        for w in rng.integers(0, 1 << 32, size=words, dtype=np.uint64).tolist():
            r = (r << 32) | w
        r >>= words * 32 - bits
        if r < total:
            return r


def _pick(weights: dict, rng: np.random.Generator):
    """Draw a key with probability weight / sum; exact (integer arithmetic) when weights are ints."""
    items = list(weights.items())
    if all(isinstance(w, int) for _, w in items):
        r = _randbelow(rng, sum(w for _, w in items))
    else:
        r = rng.random() * sum(w for _, w in items)
    for x, w in items:
        if r < w:
            return x
        r -= w
    return items[-1][0]                # float round-off only


def _batch_pick(batch: Iterable, order: float, rule: str, rng: np.random.Generator):
    m, w = collision_weights(Counter(batch), order, rule)
    return _pick(w, rng), m


# ----------------------------------------------------------------------------------------------
# Algorithm 1.


def _exact(draws: _Draws, n: int, alpha: float, rng: np.random.Generator, early_exit: bool
           ) -> tuple[Hashable, str, int]:
    trials = 0
    while True:
        trials += 1
        # Stage 1: n draws must all be equal. Stopping at the first mismatch changes the cost only.
        x = draws.take()
        ok = True
        for _ in range(n - 1):
            if draws.take() != x:
                ok = False
                if early_exit:
                    break
        if not ok:
            continue
        if alpha == 0.0:
            return x, "exact-collision", trials
        # Stage 2: accept with probability P(x)^alpha (Mendo's Bernoulli factory): a redraw of x
        # accepts; otherwise a uniform rejects with probability alpha / i.
        i = 1
        while True:
            if draws.take() == x:
                return x, "exact-factory", trials
            if rng.random() < alpha / i:
                break
            i += 1


# ----------------------------------------------------------------------------------------------
# Public entry points.


def temper(sample: Callable, temperature, *, method: str = "exact", batch_size: int = 200,
           max_calls: int | None = None, on_budget: str = "raise", seed=None,
           vectorized: bool = False, early_exit: bool = True, weights: str = "binomial",
           block_size: int = 4096) -> Tempered:
    """Draw one sample from ``P^(1/T) / Z_T`` using only draws from ``P``.

    ``T == 1`` is one plain draw (either method). ``T`` outside ``(0, 1]`` raises: a black box can
    sharpen a distribution but not heat it exactly (use logit temperature when logits exist).

    Paper: CALM (arXiv 2510.27688), Algorithm 1 (exact) and Algorithm 2 (batch).

    Args:
        sample: ``sample()`` returns one hashable outcome; with ``vectorized=True``, ``sample(k)``
            returns a sequence (or numpy array, rows become tuples) of ``k`` i.i.d. outcomes.
        temperature: ``T`` in ``(0, 1]``; a `fractions.Fraction` keeps ``1/T`` exact. ``1/T`` within
            1e-9 of an integer counts as that integer.
        method: ``"exact"`` (Algorithm 1, any real ``T``) or ``"batch"`` (Algorithm 2, integer
            ``1/T`` unless an experimental ``weights`` rule is chosen).
        batch_size: ``N``, the draws of one batch (paper default 200). ``N < 1/T`` always falls back
            (a warning says so).
        max_calls: exact mode's budget of draws for this sample (``None``: unbounded); in batch mode
            it caps ``N``.
        on_budget: when the budget runs out, ``"raise"`` `BudgetExceeded` or ``"batch"``: run
            Algorithm 2 over the draws made so far (path ``"budget-batch"``). Those draws are the
            ones that did not lead to an acceptance, so this is an approximation like batch mode; at
            non-integer ``1/T`` it uses ``weights`` if experimental, else ``"falling"``.
        seed: int, numpy Generator or None: our randomness (factory uniforms, the batch pick).
        vectorized: ``sample`` takes a count; draws are requested in blocks, doubling from the least
            an acceptance needs up to ``block_size``.
        early_exit: Stage 1 stops at the first mismatch (same output distribution, fewer calls);
            ``False`` draws all ``n`` as the paper does (Theorem 2's count).
        weights: batch weights: ``"binomial"`` (the paper), or ``"falling"`` / ``"power"`` of
            `collision_weights`: an experimental extension of ours (algorithms.md §1.5, not in the
            paper) that allows any ``T > 0`` in batch mode, biased for finite ``N``.
        block_size: the largest block asked of a vectorised sampler.

    Returns:
        A `Tempered` with the outcome, the draws it consumed and the path taken.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> r = temper(lambda k: rng.integers(3, size=k), 0.5, method="batch", vectorized=True, seed=0)
    >>> r.calls, r.path, r.order
    (200, 'batch', 2)
    """
    return temper_many(sample, temperature, 1, method=method, batch_size=batch_size,
                       max_calls=max_calls, on_budget=on_budget, seed=seed, vectorized=vectorized,
                       early_exit=early_exit, weights=weights, block_size=block_size)[0]


def temper_many(sample: Callable, temperature, n: int, *, method: str = "exact", batch_size: int = 200,
                max_calls: int | None = None, on_budget: str = "raise", seed=None,
                vectorized: bool = False, early_exit: bool = True, weights: str = "binomial",
                block_size: int = 4096) -> list[Tempered]:
    """Draw ``n`` independent tempered samples, sharing one stream of draws; see `temper`.

    With ``vectorized=True`` the draws come in blocks sized from the mean cost so far times the
    samples left (at most ``block_size``); leftovers carry over to the next sample, so little is
    wasted. ``max_calls`` is a budget per sample.

    Args:
        sample, temperature, method, batch_size, max_calls, on_budget, seed, vectorized,
        early_exit, weights, block_size: as in `temper`.
        n: how many tempered samples.

    Returns:
        ``n`` `Tempered` results in order; ``sum(r.calls for r in results)`` is the total cost.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> rs = temper_many(lambda k: rng.integers(4, size=k), 1/3, 100, vectorized=True, seed=0)
    >>> len(rs), {r.path for r in rs}, sum(r.calls for r in rs) / 100 > 3
    (100, {'exact-collision'}, True)
    """
    _check_choice("method", method, METHODS)
    _check_choice("on_budget", on_budget, ON_BUDGET)
    _check_choice("weights", weights, WEIGHTS)
    _check_int("n", n, 0)
    _check_int("batch_size", batch_size, 1)
    _check_int("max_calls", max_calls, 1, allow_none=True)
    _check_int("block_size", block_size, 1)
    experimental = method == "batch" and weights != "binomial"
    if experimental and _real(temperature) and 1 < temperature < math.inf:
        # Experimental heating (ours): weights c^(1/T) or a falling factorial with order < 1.
        rnd_n, alpha, integer, order = 0, 0.0, False, 1 / float(temperature)
    else:
        rnd_n, alpha, integer = _split(temperature)
        order = rnd_n if integer else rnd_n + alpha
    if method == "batch" and not integer and not experimental:
        raise TemperanceError(
            f"temperature must have an integer 1/T for method='batch' (Algorithm 2 has no fractional "
            f"form), got T={temperature} (1/T={order:.6g}); use method='exact', an integer 1/T, or "
            "the experimental weights='falling' or 'power'")
    capped = method == "batch" and max_calls is not None and max_calls < batch_size
    if capped:
        if on_budget == "raise":
            raise TemperanceError(f"max_calls={max_calls} is below batch_size={batch_size}; lower "
                                  "batch_size or pass on_budget='batch' to cap the batch at max_calls")
        batch_size = max_calls
    if method == "batch" and batch_size < order and order > 1 and (integer or experimental):
        warnings.warn(f"batch_size={batch_size} < 1/T={order:.6g}: no outcome can repeat 1/T times, "
                      "every batch falls back to a lower collision order", RuntimeWarning, stacklevel=3)

    rng = np.random.default_rng(seed)
    draws = _Draws(sample, bool(vectorized), block_size)
    single = order == 1 and integer
    record = method == "exact" and max_calls is not None and on_budget == "batch"
    rule = weights if (weights != "binomial" or integer) else "falling"
    results: list[Tempered] = []
    spent = 0
    for i in range(n):
        left = n - i
        if single:
            want = left
        elif method == "batch":
            want = batch_size * left
        else:                          # exact: the mean cost so far, or doubling from the minimum
            want = math.ceil(spent / i * left) if i else rnd_n + (alpha > 0)
        start = draws.start(max_calls, record, want)
        if single:
            x = draws.take()
            results.append(Tempered(x, 1, "single", 0, None))
        elif method == "batch":
            x, m = _batch_pick(draws.take_many(batch_size), order, weights, rng)
            path = "budget-batch" if capped else "batch" if m == order else "batch-fallback"
            results.append(Tempered(x, batch_size, path, 0, m))
        else:
            try:
                x, path, trials = _exact(draws, rnd_n, alpha, rng, early_exit)
                results.append(Tempered(x, draws.used - start, path, trials, None))
            except _OutOfBudget:
                if on_budget == "raise":
                    raise BudgetExceeded(
                        f"max_calls={max_calls} draws were used without accepting a sample at "
                        f"T={temperature} (exact mode); raise max_calls, or pass on_budget='batch' "
                        "to fall back to Algorithm 2 over the draws made", draws.used - start) from None
                x, m = _batch_pick(draws.record, order, rule, rng)
                results.append(Tempered(x, max_calls, "budget-batch", 0, m))
        spent += results[-1].calls
    return results


def expected_calls(probs: Sequence[float], temperature, *, early_exit: bool = False) -> float:
    """Expected base-sampler draws per exact sample (Algorithm 1) for a known ``P``.

    ``early_exit=False`` is the paper's Theorem 2, where Stage 1 always makes all ``n`` draws::

        E[N] = (n + [alpha > 0] * sum_x P(x)^(1/T - 1)) / Z_T,    Z_T = sum_x P(x)^(1/T)

    (Stage 2 for candidate ``x`` costs ``P(x)^(alpha - 1)`` draws on average.) ``early_exit=True`` is
    ours, for `temper`'s default: a trial's Stage 1 whose first draw is ``x`` costs
    ``1 + sum_{k=0}^{n-2} P(x)^k`` draws, so ``n`` is replaced by
    ``sum_x P(x) * (1 + sum_{k=0}^{n-2} P(x)^k)``. The two agree for ``n <= 2`` (``T > 1/3``).

    Args:
        probs: ``[V]`` probabilities of ``P`` (non-negative, summing to 1 within 1e-6).
        temperature: ``T`` in ``(0, 1]``.
        early_exit: which Stage 1 to count (see above).

    >>> expected_calls([0.5, 0.5], 0.5)      # n = 2: 2 draws per trial, accept w.p. 1/2
    4.0
    >>> expected_calls([1.0], 0.4)           # degenerate P: n + 1 = 3
    3.0
    """
    n, alpha, _ = _split(temperature)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 1 or p.size == 0 or not np.all(np.isfinite(p)) or np.any(p < 0) \
            or abs(p.sum() - 1) > 1e-6:
        raise TemperanceError("probs must be a non-empty 1-D vector of non-negative probabilities "
                              f"summing to 1, got {np.array2string(p, threshold=8)}")
    p = p[p > 0]                       # avoid 0 ** 0 at T == 1; zero-probability outcomes cost nothing
    inv = n + alpha
    z = np.sum(p ** inv)
    if early_exit:
        stage1 = np.sum(p * (1 + sum(p ** k for k in range(n - 1)))) if n >= 2 else 1.0
    else:
        stage1 = n
    stage2 = np.sum(p ** (inv - 1)) if alpha > 0 else 0.0
    return float((stage1 + stage2) / z)

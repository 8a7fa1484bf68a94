"""Benchmark likelihood-free temperature (``temperance.implicit``): cost against Theorem 2, and blocks.

For each black-box sampler and T in {0.9, 0.5, 1/3, 0.25} it prints, for exact mode (Algorithm 1,
early exit on) and batch mode (Algorithm 2, N = --batch-size):

- calls/sample: base-sampler draws per tempered sample, measured;
- thm2 / early: the predicted mean (`expected_calls`: Theorem 2, all n Stage-1 draws; and ours with
  early exit, what exact mode runs), when the sampler's P is known;
- us/sample: wall time per accepted sample drawing in blocks (``vectorized=True``) and one call at
  a time, and their ratio one/blocks.

    python benchmarks/implicit.py --quick
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Callable, Hashable, Sequence

import numpy as np

from temperance.implicit import expected_calls, temper_many

TEMPS = [0.9, 0.5, 1 / 3, 0.25]


@dataclass
class Sampler:
    """A black box under test: one draw, k draws, and its P when known (else None: no prediction)."""

    name: str
    one: Callable[[], Hashable]
    block: Callable[[int], Sequence]
    probs: np.ndarray | None


def categorical(name: str, probs, seed: int) -> Sampler:
    """A cheap toy black box: numpy draws from a fixed categorical P (inverse CDF)."""
    probs = np.asarray(probs, dtype=np.float64)
    cdf = np.cumsum(probs)
    cdf[-1] = 1.0
    rng = np.random.default_rng(seed)
    return Sampler(name,
                   one=lambda: int(np.searchsorted(cdf, rng.random(), side="right")),
                   block=lambda k: np.searchsorted(cdf, rng.random(k), side="right"),
                   probs=probs)


def samplers(seed: int) -> list[Sampler]:
    """Every sampler the table covers.

    HOOK: to benchmark another black box (for example the LM chunk sampler, once it exists), build a
    `Sampler` for it and append it to this list; nothing else in the script changes.
    """
    zipf = 1.0 / np.arange(1, 51)
    return [
        categorical("toy4", [0.5, 0.3, 0.15, 0.05], seed),
        categorical("zipf50", zipf / zipf.sum(), seed),
    ]


def timed(sampler: Sampler, T: float, n: int, vectorized: bool, **kw) -> tuple[float, float]:
    """Mean calls per sample and seconds per sample for n tempered samples."""
    sample = sampler.block if vectorized else sampler.one
    t0 = time.perf_counter()
    rs = temper_many(sample, T, n, vectorized=vectorized, **kw)
    dt = time.perf_counter() - t0
    return sum(r.calls for r in rs) / n, dt / n


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer samples (a few seconds in all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=200, help="N for batch mode (paper default 200)")
    args = ap.parse_args(argv)
    n_exact, n_batch = (300, 100) if args.quick else (3000, 1000)

    head = (f"{'sampler':<8} {'T':>5} {'mode':<6} {'calls/sample':>12} {'thm2':>8} {'early':>8} "
            f"{'us/sample blocks':>16} {'one-at-a-time':>13} {'one/blocks':>10}")
    print(head)
    print("-" * len(head))
    for sampler in samplers(args.seed):
        for T in TEMPS:
            for mode in ("exact", "batch"):
                integer = abs(1 / T - round(1 / T)) < 1e-9
                if mode == "batch" and not integer:
                    print(f"{sampler.name:<8} {T:>5.3g} {mode:<6} {'(Algorithm 2 needs an integer 1/T)':>39}")
                    continue
                n = n_exact if mode == "exact" else n_batch
                kw = dict(method=mode, batch_size=args.batch_size, seed=args.seed)
                calls, t_blk = timed(sampler, T, n, True, **kw)
                _, t_one = timed(sampler, T, n, False, **kw)
                if mode == "exact" and sampler.probs is not None:
                    thm2 = f"{expected_calls(sampler.probs, T):8.2f}"
                    early = f"{expected_calls(sampler.probs, T, early_exit=True):8.2f}"
                else:
                    thm2 = early = f"{'-':>8}"
                print(f"{sampler.name:<8} {T:>5.3g} {mode:<6} {calls:>12.2f} {thm2} {early} "
                      f"{t_blk * 1e6:>16.1f} {t_one * 1e6:>13.1f} {t_one / t_blk:>10.1f}")
    print(f"\nexact: {n_exact} samples per row, batch: {n_batch} (N = {args.batch_size}); thm2 = "
          "Theorem 2 (all n Stage-1 draws), early = our early-exit prediction (what exact mode runs).")


if __name__ == "__main__":
    main()

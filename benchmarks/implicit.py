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
    # Optional, for expensive samplers (the LM chunk sampler): its own temperatures, sample counts
    # ((exact, batch) with blocks, and the fewer samples timed one-at-a-time), quick and full, its
    # own N, and an estimate of P from the draws made (printed with a "~": an estimate, not P).
    temps: Sequence[float] | None = None
    counts: dict | None = None             # {"quick": (exact, batch, one), "full": (...)}
    batch_size: int | None = None
    estimate: Callable[[], np.ndarray] | None = None


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


LM_PROMPT = "The capital of France is"


def lm_chunks(seed: int, quick: bool, chunk_tokens: int = 2) -> Sampler:
    """SmolLM2 as a black box: K-token continuations of a short prompt (`ChunkSampler`)."""
    from temperance import models
    from temperance.implicit_lm import ChunkSampler

    rt = models.load("smollm2")
    s = ChunkSampler(rt, LM_PROMPT, chunk_tokens, seed=seed)

    def estimate() -> np.ndarray:
        p = np.array(list(s.estimated_probs().values()))
        return p / p.sum()

    return Sampler(f"smollm2-K{chunk_tokens}", one=lambda: s(1)[0], block=s, probs=None,
                   temps=[0.5, 1 / 3], counts={"quick": (6, 1, 1), "full": (60, 4, 4)},
                   batch_size=16 if quick else 200, estimate=estimate)


def samplers(seed: int, quick: bool = False, lm: bool = True) -> list[Sampler]:
    """Every sampler the table covers.

    HOOK: to benchmark another black box (for example the LM chunk sampler, once it exists), build a
    `Sampler` for it and append it to this list; nothing else in the script changes.
    """
    zipf = 1.0 / np.arange(1, 51)
    out = [
        categorical("toy4", [0.5, 0.3, 0.15, 0.05], seed),
        categorical("zipf50", zipf / zipf.sum(), seed),
    ]
    if lm:
        out.append(lm_chunks(seed, quick))
    return out


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
    ap.add_argument("--no-lm", action="store_true", help="skip the SmolLM2 chunk sampler rows")
    args = ap.parse_args(argv)
    n_exact, n_batch = (300, 100) if args.quick else (3000, 1000)
    lm_rows = []

    head = (f"{'sampler':<8} {'T':>5} {'mode':<6} {'calls/sample':>12} {'thm2':>8} {'early':>8} "
            f"{'us/sample blocks':>16} {'one-at-a-time':>13} {'one/blocks':>10}")
    print(head)
    print("-" * len(head))
    for sampler in samplers(args.seed, args.quick, not args.no_lm):
        if sampler.counts is not None:
            lm_rows.append(sampler)
        for T in sampler.temps or TEMPS:
            for mode in ("exact", "batch"):
                integer = abs(1 / T - round(1 / T)) < 1e-9
                if mode == "batch" and not integer:
                    print(f"{sampler.name:<8} {T:>5.3g} {mode:<6} {'(Algorithm 2 needs an integer 1/T)':>39}")
                    continue
                n = n_exact if mode == "exact" else n_batch
                n_one = n
                if sampler.counts is not None:
                    n_ex, n_ba, n_one = sampler.counts["quick" if args.quick else "full"]
                    n = n_ex if mode == "exact" else n_ba
                    n_one = min(n_one, n)
                kw = dict(method=mode, batch_size=sampler.batch_size or args.batch_size, seed=args.seed)
                calls, t_blk = timed(sampler, T, n, True, **kw)
                _, t_one = timed(sampler, T, n_one, False, **kw)
                probs, tilde = sampler.probs, " "
                if probs is None and sampler.estimate is not None:
                    probs, tilde = sampler.estimate(), "~"
                if mode == "exact" and probs is not None:
                    thm2 = f"{tilde}{expected_calls(probs, T):7.2f}"
                    early = f"{tilde}{expected_calls(probs, T, early_exit=True):7.2f}"
                else:
                    thm2 = early = f"{'-':>8}"
                print(f"{sampler.name:<8} {T:>5.3g} {mode:<6} {calls:>12.2f} {thm2} {early} "
                      f"{t_blk * 1e6:>16.1f} {t_one * 1e6:>13.1f} {t_one / t_blk:>10.1f}")
    print(f"\nexact: {n_exact} samples per row, batch: {n_batch} (N = {args.batch_size}); thm2 = "
          "Theorem 2 (all n Stage-1 draws), early = our early-exit prediction (what exact mode runs).")
    for s in lm_rows:
        q = s.counts["quick" if args.quick else "full"]
        print(f"{s.name}: SmolLM2 {LM_PROMPT!r} -> 2-token chunks at T = 1 from generate; exact: {q[0]} "
              f"samples, batch: {q[1]} (N = {s.batch_size}), one-at-a-time timed on {q[2]} (at most); "
              "thm2/early marked ~ use P estimated from every draw the sampler made so far (unseen "
              "chunks ignored), not the true P.")


if __name__ == "__main__":
    main()

"""Benchmark: `temperance eval score` per configuration, against the straightforward way, in one process.

``eval score`` applies every configuration of a grid to the same teacher-forced logits and reads
exact statistics off the result (accuracy q(y), collision, entropy, kept size, miss, and the kept
set's fingerprint). Its budget is 200 configurations × ~8k positions in 25 minutes on one core,
i.e. about 0.9 ms per configuration and position with the forward pass included.

* **ours**: `score.score_config` as the eval runs it (the chain's compacted survivors, or the
  masked dense row when most of it survives; one native float64 pass for the statistics);
* **baseline** ("dense+torch"): what one writes first: the dense chain ``Chain(params)(logits)``,
  a float64 softmax over the whole row and the same statistics in torch ops, 256 rows at a time.

Logits are the shape of SmolLM2's (V = 49152): normal × 2.5 with a few peaked tokens, float32;
the two must agree on every statistic (checked). Prints ms per position for both and the ratio.

    python benchmarks/score.py                # 512 positions, the grid below
    python benchmarks/score.py --positions 2048 --threads 1
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from temperance import Batch, Chain, SamplingParams
from temperance.eval.grid import TEMPERATURE_FIRST
from temperance.eval.score import score_block

CONFIGS = [{}, {"top_p": 0.9}, {"min_p": 0.1}, {"top_n_sigma": 1.0}, {"top_k": 50}, {"typical_p": 0.9},
           {"min_p": 0.05, "xtc_probability": 0.5, "xtc_threshold": 0.1}]
TEMPERATURES = (0.3, 1.0, 3.0, 10.0)


def logits_like_a_model(n: int, V: int = 49152, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, V, generator=g) * 2.5
    top = torch.randint(0, V, (n, 8), generator=g)
    x.scatter_add_(1, top, torch.rand(n, 8, generator=g) * 12)  # a few likely tokens per row
    y = torch.where(torch.rand(n, generator=g) < 0.5, top[:, 0], torch.randint(0, V, (n,), generator=g))
    return x, y


def baseline(x: torch.Tensor, y: torch.Tensor, params: SamplingParams) -> dict[str, torch.Tensor]:
    """Dense chain, float64 softmax, torch statistics (XTC: its exact two-part mixture)."""
    B = x.shape[0]

    def q_of(p: SamplingParams) -> torch.Tensor:
        d = Chain(p)(x, Batch([p] * B, seed=torch.zeros(B, dtype=torch.int64)))
        if p.temperature == 0:
            return torch.zeros_like(d, dtype=torch.float64).scatter_(1, d.argmax(-1, keepdim=True), 1.0)
        return torch.softmax(d.double(), -1)

    if params.active("xtc"):
        w = params.xtc_probability
        q = (1 - w) * q_of(_with(params, 0.0)) + w * q_of(_with(params, 1.0))
    else:
        q = q_of(params)
    qy = q.gather(1, y.view(-1, 1)).view(-1)
    ent = -torch.where(q > 0, q * q.log(), 0.0).sum(-1) / math.log(2)
    return {"accuracy": qy, "collision": (q * q).sum(-1), "entropy": ent,
            "kept_size": (q > 0).sum(-1).double(), "_mask": q > 0}


def _with(params: SamplingParams, prob: float) -> SamplingParams:
    import dataclasses
    return dataclasses.replace(params, xtc_probability=prob)


def timed(fn, reps: int) -> tuple[float, object]:
    out, best = None, math.inf
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--positions", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=2, help="runs per cell (the best is reported)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x, y = logits_like_a_model(args.positions)
    block = 256
    print(f"positions {args.positions}, V {x.shape[1]}, threads {args.threads}; ms per position (best of {args.reps})")
    print(f"{'configuration':<52} {'T':>5} {'ours':>7} {'dense+torch':>12} {'ratio':>6}")
    tot_ours = tot_base = 0.0
    for cfg in CONFIGS:
        for T in TEMPERATURES:
            p = SamplingParams(samplers=TEMPERATURE_FIRST, temperature=T, **cfg)
            t_ours, ours = timed(lambda: [score_block(x[s:s + 32], y[s:s + 32], p)
                                          for s in range(0, len(x), 32)], args.reps)
            t_base, base = timed(lambda: [baseline(x[s:s + block], y[s:s + block], p)
                                          for s in range(0, len(x), block)], args.reps)
            for k in ("accuracy", "collision", "entropy", "kept_size"):
                a = torch.cat([o[k] for o in ours])
                b = torch.cat([o[k] for o in base])
                assert torch.allclose(a, b, rtol=1e-6, atol=1e-9), (cfg, T, k)
            n = args.positions
            tot_ours += t_ours
            tot_base += t_base
            name = ", ".join(f"{k}={v}" for k, v in cfg.items()) or "pure"
            print(f"{name:<52} {T:>5} {1e3 * t_ours / n:>7.3f} {1e3 * t_base / n:>12.3f} "
                  f"{t_base / t_ours:>5.1f}x")
    print(f"{'all':<52} {'':>5} {1e3 * tot_ours / args.positions / len(CONFIGS) / len(TEMPERATURES):>7.3f} "
          f"{1e3 * tot_base / args.positions / len(CONFIGS) / len(TEMPERATURES):>12.3f} "
          f"{tot_base / tot_ours:>5.1f}x")


if __name__ == "__main__":
    main()

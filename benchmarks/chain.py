"""Benchmark: temperance's samplers against transformers' LogitsProcessors, in one process.

On fresh random float32 logits (normal × 3) every run, median (and min) of N runs, with 1 and 2
torch threads, for B in {1, 8, 64} and V in {49152, 128256} (and 262144 in the full grid):

* single ops, dense ``[B, V]`` in and dense out: ``ops.top_p`` vs ``TopPLogitsWarper``, ``ops.top_k``
  vs ``TopKLogitsWarper``, ``ops.min_p`` vs ``MinPLogitsWarper``, ``ops.typical_p`` vs
  ``TypicalLogitsWarper`` (top_p 0.95, top_k 40, min_p 0.05, typical_p 0.95);
* chains + draw: ours, default chain: penalties 1.1 over the last 64 of a 512-token history →
  top_k 40 → top_p 0.95 → min_p 0.05 → temperature 0.8 → draw (`Chain.sample`); ours, top-p only:
  top_p 0.95 → draw (the hard case: no top-k to shrink the work); HF: the same processors as a
  `LogitsProcessorList` in the same order, then softmax + multinomial;
* the floor: one read of the logits, ``logits.amax(-1)``.

Prints ours/floor and HF/ours, and checks on the same inputs that our kept sets equal HF's (rows
that differ only by tokens tied at the boundary are counted apart). ``TEMPERANCE_NATIVE=0`` runs the
pure-torch paths (no native kernels).

    python benchmarks/chain.py            # the full grid (several minutes)
    python benchmarks/chain.py --quick    # a smaller grid, fewer runs
    python benchmarks/chain.py --quick --only ops --threads 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from temperance import Batch, Chain, SamplingParams, ops
from temperance.ops._cut import goal

DEFAULT = dict(repetition_penalty=1.1, penalty_last_n=64, top_k=40, top_p=0.95, min_p=0.05,
               temperature=0.8)
TOP_P = dict(top_p=0.95)


def hf_processors(cfg: dict):
    from transformers import (LogitsProcessorList, MinPLogitsWarper, RepetitionPenaltyLogitsProcessor,
                              TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)
    procs = []  # our llama.cpp order: penalties → top_k → top_p → min_p → temperature
    if "repetition_penalty" in cfg:
        procs.append(RepetitionPenaltyLogitsProcessor(cfg["repetition_penalty"]))
    if "top_k" in cfg:
        procs.append(TopKLogitsWarper(cfg["top_k"]))
    procs.append(TopPLogitsWarper(cfg["top_p"]))
    if "min_p" in cfg:
        procs.append(MinPLogitsWarper(cfg["min_p"]))
    if cfg.get("temperature", 1.0) != 1.0:
        procs.append(TemperatureLogitsWarper(cfg["temperature"]))
    return LogitsProcessorList(procs)


OPS = {  # name: (our op, its knobs, the transformers warper and its argument)
    "top_p": (lambda x: ops.top_p(x, top_p=0.95), "TopPLogitsWarper", 0.95),
    "top_k": (lambda x: ops.top_k(x, top_k=40), "TopKLogitsWarper", 40),
    "min_p": (lambda x: ops.min_p(x, min_p=0.05), "MinPLogitsWarper", 0.05),
    "typical_p": (lambda x: ops.typical_p(x, typical_p=0.95), "TypicalLogitsWarper", 0.95),
}


def reach(p: float) -> float:
    """The mass that "reaches p within float32 rounding" (the rule of temperance.ops._cut)."""
    return float(goal(torch.tensor([p])))


def ref64(name: str, x: torch.Tensor, p: float) -> torch.Tensor:
    """Kept masks of top-p / typical by their float64 definition (stable sort by the key, ties by
    token id, the shortest prefix whose float64 mass reaches p within float32 rounding)."""
    x = x.double()
    logp = torch.log_softmax(x, -1)
    if name == "top_p":
        key = -x
    else:
        key = (-logp - torch.where(logp > -torch.inf, -logp.exp() * logp, 0.0).sum(-1, keepdim=True)).abs()
    order = torch.sort(key, dim=-1, stable=True).indices
    n = (logp.exp().gather(1, order).cumsum(-1) < reach(p)).sum(-1, keepdim=True) + 1
    return torch.zeros_like(x, dtype=torch.bool).scatter_(1, order, torch.arange(x.shape[1]) < n)


def op_rows(Bs, Vs, runs):
    import transformers
    print("| op | B | V | floor | ours | HF | ours/floor | HF/ours | kept≠HF (float64 agrees with ours) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, (ours_fn, warper, arg) in OPS.items():
        hf_proc = getattr(transformers, warper)(arg)
        for V in Vs:
            for B in Bs:
                torch.manual_seed(0)
                make = lambda: torch.randn(B, V) * 3  # noqa: E731
                ids = torch.zeros(B, 1, dtype=torch.int64)
                floor = timed(lambda x: x.amax(-1), make, runs)
                ours = timed(ours_fn, make, runs)
                hf = timed(lambda x: hf_proc(ids, x), make, runs)
                x = make()
                mine = torch.isfinite(ours_fn(x))
                differ = (mine != torch.isfinite(hf_proc(ids, x.clone()))).any(-1)
                bad, right = int(differ.sum()), "-"
                if bad and name in ("top_p", "typical_p"):
                    right = int((ref64(name, x[differ], arg) == mine[differ]).all(-1).sum())
                bad = f"{bad} ({right})"
                print(f"| {name} | {B} | {V} | {floor[0]:.3f} / {floor[1]:.3f} | {ours[0]:.3f} / {ours[1]:.3f} | "
                      f"{hf[0]:.2f} / {hf[1]:.2f} | {ours[0] / floor[0]:.1f}x | {hf[0] / ours[0]:.1f}x | {bad} |",
                      flush=True)


def timed(fn, make, runs):
    ts = []
    for _ in range(runs):
        x = make()
        t0 = time.perf_counter()
        fn(x)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3, min(ts) * 1e3


def kept_check(cfg, B, V, hist, procs, rows=64):
    """Rows where our kept set differs from HF's, how many of those are boundary ties, and how many
    of the others a float64 reference decides for us."""
    x = torch.randn(B, V) * 3
    params = SamplingParams(**cfg)
    batch = Batch(params, size=B, history=hist)
    c = Chain(params).candidates(x, batch)
    ours = torch.isfinite(c.dense())
    theirs = torch.isfinite(procs(hist[:, -cfg.get("penalty_last_n", 1):], x.clone()))
    differ = (ours != theirs).any(-1)
    ties = ours_right = 0
    for i in differ.nonzero().view(-1).tolist():
        if set(cfg) == {"top_p"}:  # float64 reference: value desc, id asc, shortest prefix reaching p
            row = x[i].double()
            order = sorted(range(V), key=lambda j: (-row[j].item(), j))
            q = torch.softmax(row, -1)[order].cumsum(0)
            n = int((q < reach(cfg["top_p"])).sum()) + 1
            ref = torch.zeros(V, dtype=torch.bool)
            ref[order[:n]] = True
            ours_right += bool(torch.equal(ref, ours[i]))
        extra = theirs[i] & ~ours[i]
        if not (ours[i] & ~theirs[i]).any():  # HF keeps every token tied at the boundary
            kept_min = x[i][ours[i]].min()
            if bool((x[i][extra] == kept_min).all()):
                ties += 1
    return int(differ.sum()), ties, ours_right


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--runs", type=int, default=None)
    ap.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--only", choices=["ops", "chains"], default=None)
    args = ap.parse_args()
    Bs, Vs = ([1, 8, 64], [49152, 128256]) if args.quick else ([1, 8, 64], [49152, 128256, 262144])
    runs = args.runs or (5 if args.quick else 20)
    import transformers

    from temperance.ops import _native
    native = "native kernels on" if _native.lib() is not None else "pure torch (no native kernels)"
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {native}; median/min "
          f"ms of {runs} runs on fresh normal*3 logits; load average {os.getloadavg()[0]:.1f}")
    for threads in args.threads:
        torch.set_num_threads(threads)
        print(f"\n## {threads} thread(s)\n")
        if args.only != "chains":
            op_rows(Bs, Vs, runs)
            print()
        if args.only == "ops":
            continue
        print("| chain | B | V | floor | ours | HF | ours/floor | HF/ours | kept≠HF (ties; float64 agrees with ours) |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for name, cfg in (("default", DEFAULT), ("top-p only", TOP_P)):
            procs = hf_processors(cfg)
            for V in Vs:
                for B in Bs:
                    torch.manual_seed(0)
                    hist = torch.randint(0, V, (B, 512))
                    params = SamplingParams(**cfg, seed=1)
                    batch = Batch(params, size=B, history=hist)
                    chain = Chain(params)
                    make = lambda: torch.randn(B, V) * 3  # noqa: E731
                    floor = timed(lambda x: x.amax(-1), make, runs)
                    ours = timed(lambda x: chain.sample(x, batch), make, runs)
                    ids = hist[:, -cfg.get("penalty_last_n", 1):]
                    hf = timed(lambda x: torch.multinomial(torch.softmax(procs(ids, x), -1), 1),
                               make, runs)
                    bad, ties, right = kept_check(cfg, B, V, hist, procs)
                    print(f"| {name} | {B} | {V} | {floor[0]:.3f} / {floor[1]:.3f} | "
                          f"{ours[0]:.2f} / {ours[1]:.2f} | {hf[0]:.1f} / {hf[1]:.1f} | "
                          f"{ours[0] / floor[0]:.1f}x | {hf[0] / ours[0]:.0f}x | {bad} ({ties}; {right}) |",
                          flush=True)


if __name__ == "__main__":
    main()

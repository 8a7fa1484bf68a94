"""Benchmark: temperance's chain + draw against transformers' LogitsProcessors, per decode step.

For B in {1, 8, 64} and V in {49152, 128256, 262144}, on fresh random float32 logits (normal × 3)
every run, in one process, median (and min) of N runs, with 1 and 2 torch threads:

* ours, default chain: penalties 1.1 over the last 64 of a 512-token history → top_k 40 →
  top_p 0.95 → min_p 0.05 → temperature 0.8 → draw (`Chain.sample`);
* ours, top-p only: top_p 0.95, temperature 1 → draw (the hard case: no top-k to shrink the work);
* HF: the same processors as a `LogitsProcessorList` in the same order, then softmax + multinomial;
* the floor: one read of the logits, ``logits.amax(-1)``.

Prints ours/floor and HF/ours, and checks on the same inputs that our kept sets equal HF's (rows
that differ only by tokens tied at the boundary are counted apart).

    python benchmarks/chain.py            # the full grid (several minutes)
    python benchmarks/chain.py --quick    # a smaller grid, fewer runs
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from temperance import Batch, Chain, SamplingParams

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
        if set(cfg) == {"top_p"}:  # float64 reference: value desc, id asc, shortest prefix >= p
            row = x[i].double()
            order = sorted(range(V), key=lambda j: (-row[j].item(), j))
            q = torch.softmax(row, -1)[order].cumsum(0)
            n = int((q < cfg["top_p"]).sum()) + 1
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
    args = ap.parse_args()
    Bs, Vs = ([1, 8, 64], [49152, 128256]) if args.quick else ([1, 8, 64], [49152, 128256, 262144])
    runs = args.runs or (5 if args.quick else 20)
    import transformers
    print(f"torch {torch.__version__}, transformers {transformers.__version__}; median/min ms of "
          f"{runs} runs on fresh normal*3 logits")
    for threads in args.threads:
        torch.set_num_threads(threads)
        print(f"\n## {threads} thread(s)\n")
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

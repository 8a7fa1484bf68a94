"""Benchmark: per-token overhead of constrained decoding (llguidance) on the default model, batch 1.

Greedy, one thread, same prompt. Time per decode step = (time of the last event - time of the
first event) / (tokens - 1), so the prefill is not counted. Each constrained run is compared with
an unconstrained run of the same number of tokens (EOS banned, `max_tokens` = that count), median
of `--runs`. Also reports the mask time alone (`RowConstraint.mask`).

    python benchmarks/constrained.py           # 3 runs
    python benchmarks/constrained.py --runs 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from temperance import SamplingParams  # noqa: E402
from temperance import constrain as C  # noqa: E402
from temperance.generate import generate  # noqa: E402
from temperance.models import load  # noqa: E402

CASES = {
    "regex": (C.regex(r"[A-Za-z ,.]{40,200}"), "Write one sentence about the sea."),
    "json_schema": (C.json_schema({"type": "object", "properties": {
        "title": {"type": "string"}, "summary": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}}}, "required": ["title", "summary", "tags"]}),
        "Describe a book as JSON."),
    "gbnf": (C.grammar('root ::= item (", " item)*\nitem ::= [a-z]+ (" " [a-z]+)?\n'), "List some fruits."),
}


def step_time(rt, prompt, **kw) -> tuple[float, int]:
    stamps = [time.perf_counter() for _ in generate(rt, [prompt], SamplingParams(temperature=0), chat=True, **kw)]
    return (stamps[-1] - stamps[0]) / max(1, len(stamps) - 1), len(stamps)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rt = load("smollm2", threads=1)
    step_time(rt, "warm up", max_tokens=8)
    print(f"{'case':12} {'tokens':>6} {'free ms/tok':>12} {'constr ms/tok':>14} {'overhead':>9} {'mask ms':>8}")
    for name, (con, prompt) in CASES.items():
        free, cons = [], []
        for _ in range(args.runs):
            t, n = step_time(rt, prompt, max_tokens=args.max_tokens, constraint=con)
            cons.append(t)
            free.append(step_time(rt, prompt, max_tokens=n, min_tokens=n)[0])
        row = con.row(rt)
        t0 = time.perf_counter()
        for _ in range(50):
            row.mask(rt.vocab_size)
        mask_ms = (time.perf_counter() - t0) / 50 * 1e3
        f, c = statistics.median(free), statistics.median(cons)
        print(f"{name:12} {n:6d} {f * 1e3:12.2f} {c * 1e3:14.2f} {100 * (c / f - 1):8.1f}% {mask_ms:8.3f}")


if __name__ == "__main__":
    main()

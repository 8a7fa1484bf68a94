"""Benchmark: tokens/s of the generation loop on the default model, against transformers.

In one process, for batch 1 and 8, with a modern chain (min-p 0.1, temperature 1.5) and a fixed
number of new tokens (EOS banned until then, so both sides decode the same number of steps):

* ours: `temperance.generate_text` (prefill, then chain → pick → detokenise → decode per step);
* transformers: ``model.generate(do_sample=True, min_p=0.1, temperature=1.5, top_k=None, ...)``
  with ``min_new_tokens == max_new_tokens`` (its own order puts temperature before min-p; the cost
  is the same);
* the share of each of our steps spent in sampling (`Chain.sample`; target < 5% at batch 8).

    python benchmarks/generate.py            # 64 new tokens, 3 runs
    python benchmarks/generate.py --quick    # 24 new tokens, 1 run
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from temperance import SamplingParams  # noqa: E402
from temperance.chain import Chain  # noqa: E402
from temperance.generate import generate_text  # noqa: E402
from temperance.models import load  # noqa: E402

PROMPTS = ["Once upon a time, there was a little girl named Lily who", "The old lighthouse keeper",
           "In the year 2150, humans", "My favourite recipe for soup is", "The river was",
           "She opened the letter and", "Scientists have discovered", "The best way to learn is"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", default="1", help="a count, or 'auto' (temperance's default: free CPUs)")
    ap.add_argument("--tokens", type=int, default=None)
    args = ap.parse_args()
    n_tok = args.tokens or (24 if args.quick else 64)
    runs = 1 if args.quick else 3
    if args.threads == "auto":
        from temperance.runtime import default_threads
        args.threads = default_threads()
    args.threads = int(args.threads)
    torch.set_num_threads(args.threads)
    rt = load("smollm2", threads=args.threads)
    model, tok = rt.model, rt.tokenizer
    params = SamplingParams(min_p=0.1, temperature=1.5, seed=0)

    sample_time = [0.0]
    original = Chain.sample

    def timed_sample(self, *a, **kw):
        t0 = time.perf_counter()
        out = original(self, *a, **kw)
        sample_time[0] += time.perf_counter() - t0
        return out

    print(f"torch {torch.__version__}, {args.threads} thread(s), OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY', '(unset)')}, load {os.getloadavg()[0]:.2f}, "
          f"{n_tok} new tokens, median of {runs}")
    print("| batch | ours tok/s | transformers tok/s | ours / HF | sampling share of our step |")
    print("|---:|---:|---:|---:|---:|")
    generate_text(rt, PROMPTS[:1], params, max_tokens=4)  # warm both paths up once
    for B in (1, 8):
        prompts = PROMPTS[:B]
        ours, hf, share = [], [], []
        for _ in range(runs):
            Chain.sample = timed_sample
            sample_time[0] = 0.0
            t0 = time.perf_counter()
            out = generate_text(rt, prompts, params, max_tokens=n_tok, min_tokens=n_tok)
            dt = time.perf_counter() - t0
            Chain.sample = original
            assert all(len(c[0].tokens) == n_tok for c in out)
            ours.append(B * n_tok / dt)
            share.append(sample_time[0] / dt)

            enc = tok.tok(prompts, return_tensors="pt", padding=True, padding_side="left") \
                if hasattr(tok, "tok") else None
            if enc is None:
                raise SystemExit("tokenizer wrapper has no .tok; cannot build the HF batch")
            t0 = time.perf_counter()
            with torch.no_grad():
                model.generate(**enc, do_sample=True, min_p=0.1, temperature=1.5, top_k=None, top_p=None,
                               max_new_tokens=n_tok, min_new_tokens=n_tok, pad_token_id=2)
            hf.append(B * n_tok / (time.perf_counter() - t0))
        o, h = statistics.median(ours), statistics.median(hf)
        print(f"| {B} | {o:.1f} | {h:.1f} | {o / h:.2f}x | {100 * statistics.median(share):.1f}% |",
              flush=True)


if __name__ == "__main__":
    main()

"""Benchmark: our beam search against transformers' `model.generate(num_beams=...)`, same settings.

Default model (SmolLM2), one prompt, width 4, `max_new_tokens` new tokens, greedy beam search
(do_sample=False), length_penalty 1.0, early_stopping False, one torch thread by default. EOS is
disabled on both sides (min_new_tokens / no EOS ids) so that both run exactly `--tokens` steps and
the tokens/s compare the same work. Reports the median of `--runs` runs, each side's new tokens/s
(beam steps × 1 token per step for the returned sequence) and the ratio ours / HF, and checks the
returned sequences are the same.

    python benchmarks/search.py                 # 64 new tokens, 3 runs
    python benchmarks/search.py --tokens 32 --runs 2
    python benchmarks/search.py --mbr 8 32 64 --utilities chrf bleu embedding   # + MBR cost split
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from temperance import models
from temperance.search import BeamSettings, beam_search

PROMPT = "The history of the printing press begins"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--beams", type=int, default=4)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--mbr", type=int, nargs="*", default=[8, 32, 64], help="MBR candidate counts (none: skip)")
    ap.add_argument("--mbr-tokens", type=int, default=32)
    ap.add_argument("--utilities", nargs="*", default=["chrf", "bleu", "embedding"])
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rt = models.load("smollm2", threads=a.threads)
    model, tok = rt.model, rt.tokenizer
    ids = tok.encode(PROMPT)
    rt.eos_token_ids = frozenset()  # run the full length on our side too

    def ours():
        return beam_search(rt, [ids], BeamSettings(beams=a.beams), max_tokens=a.tokens)[0][0].tokens

    def hf():
        x = torch.tensor([ids])
        out = model.generate(x, attention_mask=torch.ones_like(x), num_beams=a.beams, do_sample=False,
                             max_new_tokens=a.tokens, min_new_tokens=a.tokens, length_penalty=1.0,
                             early_stopping=False, pad_token_id=0)
        return out[0, len(ids):].tolist()

    ours(), hf()  # warm up
    res = {}
    for name, fn in (("ours", ours), ("hf", hf)):
        times = []
        for _ in range(a.runs):
            t0 = time.perf_counter()
            toks = fn()
            times.append(time.perf_counter() - t0)
        res[name] = (statistics.median(times), toks)
    same = res["ours"][1] == res["hf"][1]
    print(f"beam search, width {a.beams}, {a.tokens} new tokens, {a.threads} thread(s), median of {a.runs}")
    for name in ("ours", "hf"):
        t = res[name][0]
        print(f"  {name:5s} {t:7.3f} s   {a.tokens / t:7.2f} tokens/s")
    print(f"  ours/hf speed ratio: {res['hf'][0] / res['ours'][0]:.3f}   same tokens: {same}")
    if a.mbr:
        mbr_costs(rt, a)


def mbr_costs(rt, a) -> None:
    """MBR cost for N candidates, split into sampling (generate, n=N) and utility (N·(N−1) pairs)."""
    from temperance.mbr import _sample, mbr_select

    print(f"\nMBR, {a.mbr_tokens} new tokens per candidate, epsilon 0.02 sampling")
    print("| N | sampling s | utility | utility s | total s |")
    print("|---:|---:|---|---:|---:|")
    for n in a.mbr:
        t0 = time.perf_counter()
        texts, lps, _ = _sample(rt, PROMPT, None, n, max_tokens=a.mbr_tokens)
        t_sample = time.perf_counter() - t0
        for utility in a.utilities:
            t1 = time.perf_counter()
            mbr_select(texts, utility, logprobs=lps)
            t_util = time.perf_counter() - t1
            print(f"| {n} | {t_sample:.2f} | {utility} | {t_util:.3f} | {t_sample + t_util:.2f} |", flush=True)


if __name__ == "__main__":
    main()

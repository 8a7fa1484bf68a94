"""Benchmark: the two hostile-request costs of issue 9 §6, against named baselines in one process.

1. DRY sequence-breaker expansion on the SmolLM2 tokenizer (49,152 tokens): 8, 64 (the most a
   request may give) and 100 breakers (``"e0ing"`` … ``"e99ing"``; refused, the expansion timed
   alone), first call and cached call, against the quadratic expansion this replaced (``--old``:
   tens of seconds for 8 breakers; more are not attempted).
2. ``logit_bias`` over all 49,152 ids through `generate` (n = 8, 16 tokens), against the same
   generation without a bias.

    python benchmarks/hostile.py            # both
    python benchmarks/hostile.py --old      # also the old expansion of 8 breakers (slow)
    python benchmarks/hostile.py --only bias
"""

from __future__ import annotations

import argparse
import importlib
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from temperance import SamplingParams  # noqa: E402
from temperance.generate import generate  # noqa: E402
from temperance.models import load  # noqa: E402
from temperance.ops import expand_sequence_breakers  # noqa: E402

dry_mod = importlib.import_module("temperance.ops.dry")  # (the package exports the function `dry`)


def old_expand(breakers, token_texts, encode, max_chars=40, max_tail=20):
    """The expansion before issue 9 (a list-membership test per candidate): the baseline."""
    seqs = []
    for s in breakers:
        s = s[:max_chars]
        for tok, word in enumerate(token_texts):
            if s in word:
                seqs.append((tok,))
                continue
            start = word.find(s[0])
            while start != -1:
                tail = word[start:]
                if s.startswith(tail):
                    seq = (tok, *encode(s[len(tail):])[:max_tail])
                    if seq not in seqs:
                        seqs.append(seq)
                start = word.find(s[0], start + 1)
    return seqs


def timed(f):
    t0 = time.perf_counter()
    out = f()
    return time.perf_counter() - t0, out


def bench_dry(rt, old: bool) -> None:
    tok = rt.tokenizer
    texts = tok.token_texts()
    encode = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
    print(f"DRY breaker expansion, vocabulary {len(texts)}")
    for n in (8, dry_mod.MAX_BREAKERS, 100):
        br = [f"e{i}ing" for i in range(n)]
        dry_mod._CACHE.clear()
        if n > dry_mod.MAX_BREAKERS:  # a request is refused; time the expansion itself anyway
            try:
                expand_sequence_breakers(br, texts, encode)
            except Exception as e:
                print(f"  {n:3d} breakers: refused: {e}")
            t1, seqs = timed(lambda: dry_mod._expand(tuple(br), texts, encode))
            print(f"  {n:3d} breakers: {len(seqs):6d} sequences, the expansion alone {t1:7.3f} s")
            continue
        t1, seqs = timed(lambda: expand_sequence_breakers(br, texts, encode))
        t2, _ = timed(lambda: expand_sequence_breakers(br, texts, encode))
        line = f"  {n:3d} breakers: {len(seqs):6d} sequences, first call {t1:7.3f} s, cached {t2 * 1e3:7.3f} ms"
        if old and n == 8:
            t0, ref = timed(lambda: old_expand(br, texts, encode))
            same = sorted(set(ref)) == sorted(seqs)
            line += f"; old expansion {t0:7.2f} s ({t0 / t1:,.0f}x slower, same sequences: {same})"
        print(line)


def bench_bias(rt) -> None:
    V = rt.vocab_size
    bias = {i: (i % 7) * 1e-3 for i in range(V)}
    prompt = ["The old lighthouse keeper"]
    print(f"logit_bias over all {V} ids, n = 8, 16 tokens (EOS banned until then)")
    times = {}
    for name, params in (("no bias", SamplingParams(seed=0)),
                         ("all ids biased", SamplingParams(seed=0, logit_bias=bias))):
        t, events = timed(lambda: list(generate(rt, prompt, params, max_tokens=16, min_tokens=16, n=8)))
        times[name] = t
        print(f"  {name:15s} {t:7.2f} s")
    print(f"  ratio biased / plain: {times['all ids biased'] / times['no bias']:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", action="store_true", help="also time the old DRY expansion (8 breakers)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", choices=("dry", "bias"), default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rt = load("smollm2", threads=args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s); load average {os.getloadavg()[0]:.1f}")
    if args.only in (None, "dry"):
        bench_dry(rt, args.old)
    if args.only in (None, "bias"):
        bench_bias(rt)


if __name__ == "__main__":
    main()

"""Benchmark: vLLM with temperance's processor against vLLM's own sampling, at equal settings.

Runs in the vLLM environment (``bash scripts/setup-vllm.sh``)::

    .venv-vllm/bin/python benchmarks/vllm.py            # 64 new tokens, best of 3
    .venv-vllm/bin/python benchmarks/vllm.py --quick    # 24 new tokens, 1 run

One process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``: the engine runs in this process, so the time
spent inside our processor can be measured here), one thread, SmolLM2-135M fp32, EOS ignored so
both sides decode the same number of steps. Settings: min-p 0.1 at temperature 1 —

* vLLM's own: ``SamplingParams(min_p=0.1)``;
* ours: ``SamplingParams(extra_args={"temperance": {"min_p": 0.1}})`` through
  ``temperance.vllm:LogitsProcessor`` (vLLM's own samplers neutral).

Both run in the same engine (the processor is loaded for both; a request without our knobs costs
it nothing). Prints tokens/s for batch 1 and 8, their ratio, and the processor's share of the
wall time of our runs (target: <= 5%).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

# This file is named vllm.py: keep its own directory off the import path, so `import vllm` is vLLM.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]

for k, v in {"HF_HUB_OFFLINE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1",
             "VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "1", "VLLM_NO_USAGE_STATS": "1",
             "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(k, v)

PROMPTS = ["Once upon a time, there was a little girl named Lily who", "The old lighthouse keeper",
           "In the year 2150, humans", "My favourite recipe for soup is", "The river was",
           "She opened the letter and", "Scientists have discovered", "The best way to learn is"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--tokens", type=int, default=None)
    args = ap.parse_args()
    n_tok = args.tokens or (24 if args.quick else 64)
    runs = 1 if args.quick else 3

    import torch
    from vllm import LLM, SamplingParams

    import temperance.vllm as tv
    from temperance.models import model_dir

    torch.set_num_threads(1)
    spent = [0.0, 0]  # seconds inside our processor, calls
    run = tv._Core.run

    def timed(self, *a, **kw):
        t0 = time.perf_counter()
        try:
            return run(self, *a, **kw)
        finally:
            spent[0] += time.perf_counter() - t0
            spent[1] += 1

    tv._Core.run = timed
    llm = LLM(model=str(model_dir("smollm2")), dtype="float32", enforce_eager=True, max_model_len=512,
              logits_processors=[tv.LogitsProcessor], seed=0, generation_config="vllm")

    def sps(batch: int, ours: bool) -> list:
        kw = dict(max_tokens=n_tok, ignore_eos=True)
        if ours:
            return [SamplingParams(seed=i, extra_args={"temperance": {"min_p": 0.1}}, **kw) for i in range(batch)]
        return [SamplingParams(seed=i, min_p=0.1, **kw) for i in range(batch)]

    def tok_s(batch: int, ours: bool) -> tuple[float, float]:
        spent[0] = 0.0
        t0 = time.perf_counter()
        outs = llm.generate(PROMPTS[:batch], sps(batch, ours), use_tqdm=False)
        wall = time.perf_counter() - t0
        n = sum(len(o.outputs[0].token_ids) for o in outs)
        assert n == batch * n_tok, n
        return n / wall, spent[0] / wall

    llm.generate(PROMPTS[:1], sps(1, True), use_tqdm=False)  # warm-up both paths
    llm.generate(PROMPTS[:1], sps(1, False), use_tqdm=False)
    print(f"vllm {__import__('vllm').__version__}, torch {torch.__version__}, 1 thread, one process, "
          f"{n_tok} new tokens, best of {runs}")
    print("| batch | vLLM own min-p tok/s | vLLM + temperance tok/s | ours / own | processor share |")
    print("|---:|---:|---:|---:|---:|")
    for batch in (1, 8):
        own, ours, share = 0.0, 0.0, 1.0
        for _ in range(runs):  # alternate, so load from other processes hits both alike
            own = max(own, tok_s(batch, False)[0])
            t, s = tok_s(batch, True)
            if t > ours:
                ours, share = t, s
        print(f"| {batch} | {own:.1f} | {ours:.1f} | {ours / own:.2f} | {100 * share:.1f}% |")


if __name__ == "__main__":
    main()

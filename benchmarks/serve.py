"""Continuous batching: the engine's step, head-of-line latency and throughput of `temperance serve`.

    python benchmarks/serve.py                       # everything (a few minutes on 2 cores)
    python benchmarks/serve.py --parts step,hol      # some of: step, vllm, hol, load
    python benchmarks/serve.py --baseline /work/main/src   # also run hol/load on that checkout's server

Parts (SmolLM2-135M, 1 torch thread, seeded, T 0.8, min-p 0.05; ratios are from this one run):

* step: steady-state decode step at batch 8 — `generate()` on 8 prompts (a static batch) vs the
  engine with requests of staggered lengths joining and leaving so that 8 rows stay live (steps
  where a row joined or left excluded). Also where a step's time goes (runtime.decode, the chain +
  pick, the rest: per-row Python).
* vllm: batch-8, 64-token decode throughput, ours (`generate`) vs vLLM's CPU build (its own min-p),
  when ``/work/wt-vllm/.venv-vllm`` exists (skipped otherwise, saying so).
* hol: head of line — an 8-token request's latency on an idle server, and sent 1 s into a
  256-token request; target ratio ≤ 1.5.
* load: aggregate completion tokens/s and p50/p95 latency at 1, 8 and 32 concurrent streaming
  clients (64-token completions).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

PROMPTS = ["Once upon a time", "The capital of France is", "def add(a, b):", "My favourite colour is",
           "In 1492,", "The best way to learn is", "She opened the letter and", "Scientists have discovered"]
VLLM_PY = "/work/wt-vllm/.venv-vllm/bin/python"


# -- the step (in process) ------------------------------------------------------------------------

def step_part(tokens: int) -> dict:
    import torch

    from temperance import SamplingParams, models
    from temperance.engine import Engine, Request
    from temperance.generate import generate

    torch.set_num_threads(1)
    rt = models.load("smollm2", threads=1)
    tok = rt.tokenizer
    ids = [tok.encode(p) for p in PROMPTS]
    p = SamplingParams(temperature=0.8, min_p=0.05, seed=1)

    # generate(): one static batch of 8; a step = 8 events (EOS banned by min_tokens)
    stamps = []
    for i, _ in enumerate(generate(rt, ids, p, max_tokens=tokens, min_tokens=tokens)):
        if i % 8 == 0:
            stamps.append(time.perf_counter())
    static = [b - a for a, b in zip(stamps[1:], stamps[2:])]  # (the first gap includes the prefill)

    # the engine, continuously: 8 live rows, requests of 16..64 tokens joining as others finish
    eng = Engine(rt)
    timers = {"decode": 0.0, "chain": 0.0}
    decode, sample = rt.decode, eng.sample

    def timed(name, f):
        def g(*a, **kw):
            t0 = time.perf_counter()
            try:
                return f(*a, **kw)
            finally:
                timers[name] += time.perf_counter() - t0
        return g
    rt.decode, eng.sample = timed("decode", decode), timed("chain", sample)
    k = 0

    def add():
        nonlocal k
        n = 16 + (k * 12) % 49
        eng.add(Request(ids[k % 8], SamplingParams(temperature=0.8, min_p=0.05, seed=k), max_tokens=n,
                        min_tokens=n))
        k += 1
    for _ in range(8):
        add()
    steady, all_steps = [], []
    split = {"decode": 0.0, "chain": 0.0, "total": 0.0}
    for s in range(12 * tokens // 4):
        before = (len(eng.rows), len(eng.pending))
        timers["decode"] = timers["chain"] = 0.0
        t0 = time.perf_counter()
        eng.step()
        dt = time.perf_counter() - t0
        all_steps.append(dt)
        if before == (8, 0) and len(eng.rows) == 8 and s > 2:
            steady.append(dt)
            for key in ("decode", "chain"):
                split[key] += timers[key]
            split["total"] += dt
        while len(eng.rows) + len(eng.pending) < 8:
            add()
    rt.decode = decode
    med_s, med_c = statistics.median(static), statistics.median(steady)
    out = {"static_step_ms": 1e3 * med_s, "engine_step_ms": 1e3 * med_c, "ratio": med_c / med_s,
           "engine_all_steps_ms": 1e3 * statistics.median(all_steps), "steady_steps": len(steady),
           "decode_share": split["decode"] / split["total"], "chain_share": split["chain"] / split["total"]}
    print("\n## step (batch 8, median over steady-state steps)")
    print("| generate() static batch ms | engine continuous ms | ratio | engine, all steps ms | "
          "runtime.decode | chain + pick | rest (per-row Python) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {out['static_step_ms']:.1f} | {out['engine_step_ms']:.1f} | {out['ratio']:.2f} | "
          f"{out['engine_all_steps_ms']:.1f} | {100 * out['decode_share']:.0f}% | "
          f"{100 * out['chain_share']:.0f}% | {100 * (1 - out['decode_share'] - out['chain_share']):.0f}% |")
    return out


_VLLM = r"""
import os, sys, time, json
os.environ.update(HF_HUB_OFFLINE="1", VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_CPU_KVCACHE_SPACE="1",
                  VLLM_CPU_OMP_THREADS_BIND="nobind", OMP_NUM_THREADS="1", VLLM_NO_USAGE_STATS="1",
                  TOKENIZERS_PARALLELISM="false")
import torch
torch.set_num_threads(1)
from vllm import LLM, SamplingParams
sys.path.insert(0, "/work/wt-vllm/src")
from temperance.models import model_dir
prompts, n = json.loads(sys.argv[1]), int(sys.argv[2])
llm = LLM(model=str(model_dir("smollm2")), dtype="float32", enforce_eager=True, max_model_len=512, seed=0,
          generation_config="vllm")
sp = [SamplingParams(seed=i, temperature=0.8, min_p=0.05, max_tokens=n, ignore_eos=True) for i in range(len(prompts))]
llm.generate(prompts[:1], sp[:1], use_tqdm=False)
best = 0.0
for _ in range(2):
    t0 = time.perf_counter()
    outs = llm.generate(prompts, sp, use_tqdm=False)
    best = max(best, sum(len(o.outputs[0].token_ids) for o in outs) / (time.perf_counter() - t0))
print("RESULT", json.dumps({"vllm": __import__("vllm").__version__, "tok_s": best}))
"""


def vllm_part(tokens: int) -> dict | None:
    print("\n## vLLM side by side (batch 8, %d tokens, 1 thread, best of 2)" % tokens)
    if not os.path.exists(VLLM_PY):
        print(f"skipped: {VLLM_PY} does not exist")
        return None
    import torch

    from temperance import SamplingParams, models
    from temperance.generate import generate

    rt = models.load("smollm2", threads=1)
    ids = [rt.tokenizer.encode(p) for p in PROMPTS]
    p = SamplingParams(temperature=0.8, min_p=0.05, seed=1)
    torch.set_num_threads(1)
    ours = 0.0
    for _ in range(2):
        t0 = time.perf_counter()
        n = sum(1 for _ in generate(rt, ids, p, max_tokens=tokens, min_tokens=tokens))
        ours = max(ours, n / (time.perf_counter() - t0))
    del rt
    r = subprocess.run([VLLM_PY, "-c", _VLLM, json.dumps(PROMPTS), str(tokens)], capture_output=True,
                       text=True, timeout=900)
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    if not line:
        print("skipped: vLLM failed:", (r.stderr or r.stdout).strip().splitlines()[-1:])
        return {"ours_tok_s": ours}
    v = json.loads(line[0][7:])
    print("| ours (generate) tok/s | vLLM %s tok/s | ours / vLLM |" % v["vllm"])
    print("|---:|---:|---:|")
    print(f"| {ours:.1f} | {v['tok_s']:.1f} | {ours / v['tok_s']:.2f} |")
    return {"ours_tok_s": ours, "vllm_tok_s": v["tok_s"], "vllm": v["vllm"]}


# -- the server (subprocess) ----------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, src: str):
        import httpx

        self.port = free_port()
        env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=os.path.abspath(src), TOKENIZERS_PARALLELISM="false")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "temperance", "serve", "--port", str(self.port), "--threads", "1",
             "--max-queue", "1024", "--max-batch", "32", "--max-tokens-cap", "512"], env=env)
        self.base = f"http://127.0.0.1:{self.port}"
        for _ in range(480):
            try:
                if httpx.get(self.base + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.5)
        raise RuntimeError("server did not start")

    def close(self):
        self.proc.terminate()
        self.proc.wait(30)


async def one(client, base, i, max_tokens, stream=True, extra=None):
    t0, tokens = time.perf_counter(), 0
    body = {"prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": max_tokens, "seed": i, "stream": stream,
            "temperature": 0.8, "min_p": 0.05, "min_tokens": max_tokens, **(extra or {})}
    if stream:
        async with client.stream("POST", base + "/v1/completions", json=body) as r:
            r.raise_for_status()
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    tokens += 1
    else:
        r = await client.post(base + "/v1/completions", json=body)
        r.raise_for_status()
        tokens = r.json()["usage"]["completion_tokens"]
    return time.perf_counter() - t0, tokens


async def level(base, conc, total, max_tokens):
    import httpx

    sem = asyncio.Semaphore(conc)
    async with httpx.AsyncClient(timeout=600) as client:
        async def run(i):
            async with sem:
                return await one(client, base, i, max_tokens)
        t0 = time.perf_counter()
        res = await asyncio.gather(*(run(i) for i in range(total)))
        wall = time.perf_counter() - t0
    lat = sorted(r[0] for r in res)
    return {"concurrency": conc, "requests": total, "tokens": sum(r[1] for r in res), "wall_s": wall,
            "tok_s": sum(r[1] for r in res) / wall, "p50_s": statistics.median(lat),
            "p95_s": lat[min(len(lat) - 1, int(0.95 * len(lat)))]}


async def hol(base):
    import httpx

    async with httpx.AsyncClient(timeout=600) as client:
        idle = statistics.median([(await one(client, base, 1, 8, stream=False))[0] for _ in range(3)])
        long_task = asyncio.create_task(one(client, base, 0, 256, stream=False))
        await asyncio.sleep(1.0)
        busy = (await one(client, base, 1, 8, stream=False))[0]
        long_s = (await long_task)[0]
    return {"idle_s": idle, "during_long_s": busy, "ratio": busy / idle, "long_s": long_s}


def server_parts(src: str, label: str, parts: set, requests: int, tokens: int, levels: list[int]) -> dict:
    srv = Server(src)
    out: dict = {"server": label}
    try:
        asyncio.run(level(srv.base, 1, 2, 8))  # warm up
        if "hol" in parts:
            out["hol"] = asyncio.run(hol(srv.base))
        if "load" in parts:
            out["load"] = [asyncio.run(level(srv.base, c, max(requests // 8, 2) if c == 1 else requests, tokens))
                           for c in levels]
    finally:
        srv.close()
    return out


def print_server(res: dict) -> None:
    if "hol" in res:
        h = res["hol"]
        print(f"\n## head of line ({res['server']}): 8-token request")
        print("| idle s | during a 256-token request s | ratio (target ≤ 1.5) | the long request s |")
        print("|---:|---:|---:|---:|")
        print(f"| {h['idle_s']:.2f} | {h['during_long_s']:.2f} | {h['ratio']:.2f} | {h['long_s']:.1f} |")
    if "load" in res:
        print(f"\n## load ({res['server']}): streaming, {res['load'][0]['tokens'] // res['load'][0]['requests']}"
              "-token completions")
        print("| clients | requests | tokens | wall s | tokens/s | p50 s | p95 s |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for r in res["load"]:
            print(f"| {r['concurrency']} | {r['requests']} | {r['tokens']} | {r['wall_s']:.1f} | {r['tok_s']:.1f} | "
                  f"{r['p50_s']:.2f} | {r['p95_s']:.2f} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default="step,vllm,hol,load")
    ap.add_argument("--requests", type=int, default=32, help="requests per load level (1 client: 1/8 of it)")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--baseline", default=None, metavar="SRC", help="also run hol/load on this src dir")
    ap.add_argument("--levels", default="1,8,32", help="load: concurrent clients per level")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    print(f"load before: {os.getloadavg()}")
    res: dict = {}
    if "step" in parts:
        res["step"] = step_part(args.tokens)
    if "vllm" in parts:
        res["vllm"] = vllm_part(args.tokens)
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
    if parts & {"hol", "load"}:
        runs = [(here, "engine")] + ([(args.baseline, "baseline " + args.baseline)] if args.baseline else [])
        res["servers"] = []
        for src, label in runs:
            r = server_parts(src, label, parts, args.requests, args.tokens,
                             [int(c) for c in args.levels.split(",")])
            print_server(r)
            res["servers"].append(r)
    print(f"\nload after: {os.getloadavg()}")
    print(json.dumps(res))


if __name__ == "__main__":
    main()

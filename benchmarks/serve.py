"""Throughput and latency of `temperance serve` at concurrency 1, 8, 32 (static micro-batching).

    python benchmarks/serve.py [--requests 32] [--max-tokens 8] [--model smollm2]

Starts a server subprocess on a free 127.0.0.1 port, sends seeded streaming completions with the
openai-compatible API (httpx), and prints aggregate completion tokens/s, p50/p95 request latency,
and the speed-up over concurrency 1 (sequential single requests).
"""

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time

import httpx

PROMPTS = ["Once upon a time", "The capital of France is", "def add(a, b):", "My favourite colour is"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def one(client, base, i, max_tokens):
    t0, tokens = time.perf_counter(), 0
    body = {"prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": max_tokens, "seed": i, "stream": True,
            "temperature": 0.8, "min_p": 0.05}
    async with client.stream("POST", base + "/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                tokens += 1
    return time.perf_counter() - t0, tokens


async def level(base, conc, total, max_tokens):
    sem = asyncio.Semaphore(conc)
    async with httpx.AsyncClient(timeout=300) as client:
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=32, help="requests per concurrency level (c=1 uses half)")
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    port = free_port()
    cmd = [sys.executable, "-m", "temperance", "serve", "--model", args.model, "--port", str(port),
           "--max-queue", "1024"] + (["--threads", str(args.threads)] if args.threads else [])
    proc = subprocess.Popen(cmd, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        asyncio.run(level(base, 1, 2, args.max_tokens))  # warm up
        rows = [asyncio.run(level(base, c, max(args.requests // 2, 1) if c == 1 else args.requests, args.max_tokens))
                for c in (1, 8, 32)]
    finally:
        proc.terminate()
        proc.wait(30)
    print(f"\nmodel {args.model}, max_tokens {args.max_tokens}, streaming, seeded, min_p 0.05, T 0.8")
    print("| concurrency | requests | tokens | wall s | tokens/s | p50 latency s | p95 latency s | speed-up vs c=1 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['concurrency']} | {r['requests']} | {r['tokens']} | {r['wall_s']:.1f} | {r['tok_s']:.1f} | "
              f"{r['p50_s']:.2f} | {r['p95_s']:.2f} | {r['tok_s'] / rows[0]['tok_s']:.1f}x |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()

"""Likelihood-free temperature on a language model: temper whole K-token chunks, as CALM does.

`ChunkSampler` turns a runtime and a prompt into the black box `temperance.implicit` needs: calling
it with ``k`` returns ``k`` i.i.d. ``K``-token continuations (tuples of token ids) drawn at
temperature 1 with our `generate` loop (one batched call per block: the prompt is prefilled once and
forked into ``k`` rows). `temper` / `temper_many` over it then sample from

    P_T(c) = P(c)^(1/T) / Z_T,     P(c) = prod_i p(c_i | prompt, c_<i)      (the chunk's joint)

using draws only, which is how CALM (arXiv 2510.27688, Section 5) samples at temperature from a model
with no logits. `logit_tempered` draws chunks with ordinary logit temperature for comparison, and
`compare` puts the two side by side.

**They are not the same distribution for K > 1.** Logit temperature tempers each token's
*conditional*: ``prod_i p(c_i | c_<i)^(1/T) / Z_i(c_<i)``, a different normaliser per prefix, whereas
CALM tempers the *joint* with one normaliser ``Z_T``. For ``K = 1`` the two coincide. A chunk may
end early: a row that samples EOS stops there, so its chunk is shorter than ``K`` (EOS included).

`chunk_distribution` enumerates ``P`` from the model's logits (all chunks, or the top ones per step)
so that small cases can be checked exactly; `add_parser` registers the ``implicit`` CLI subcommand.
"""

from __future__ import annotations

import argparse
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Hashable, Mapping, Sequence

import numpy as np
import torch

from .errors import TemperanceError
from .generate import encode_prompts, generate
from .implicit import METHODS, Tempered, expected_calls, temper_many
from .params import SamplingParams

__all__ = ["ChunkSampler", "Comparison", "logit_tempered", "chunk_distribution", "tempered_distribution",
           "total_variation", "compare", "add_parser", "cmd_implicit"]

_SEED_SPACE = 2**62          # generate adds the row index to a request's seed; stay below 2^63


def _check_int(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise TemperanceError(f"{name} must be an integer >= {low}, got {value!r}")


def _check_seed(seed) -> None:
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))
                             or not 0 <= seed < 2**63):
        raise TemperanceError(f"seed must be an integer in [0, 2^63) or None, got {seed!r}")


def _prompt_ids(runtime: Any, prompt, chat: bool, chunk_tokens: int) -> list[int]:
    if prompt is None or (not isinstance(prompt, str) and not isinstance(prompt, Sequence)):
        raise TemperanceError(f"prompt must be a string or a sequence of token ids, got {type(prompt).__name__}")
    ids = encode_prompts(getattr(runtime, "tokenizer", None), [prompt], chat=chat)[0]
    max_context = getattr(runtime, "max_context", None)
    if max_context is not None and len(ids) + chunk_tokens > max_context:
        raise TemperanceError(f"prompt ({len(ids)} tokens) + chunk_tokens ({chunk_tokens}) exceeds the "
                              f"model's max_context ({max_context})")
    vocab = getattr(runtime, "vocab_size", None)
    if vocab is not None and any(not 0 <= t < vocab for t in ids):
        raise TemperanceError(f"prompt token ids must be in [0, {vocab}), got {ids}")
    return ids


def _draw_chunks(runtime: Any, ids: list[int], k: int, chunk_tokens: int, temperature: float,
                 seed: int) -> list[tuple[int, ...]]:
    """One generate call: ``k`` rows of the prompt, ``chunk_tokens`` tokens each, at ``temperature``."""
    rows: list[list[int]] = [[] for _ in range(k)]
    params = SamplingParams(temperature=temperature, seed=int(seed))
    for e in generate(runtime, [ids], params, max_tokens=chunk_tokens, n=k):
        rows[e.sample].append(e.token)
    return [tuple(r) for r in rows]


class ChunkSampler:
    """A vectorised black box over ``K``-token continuations of a prompt, at temperature 1.

    ``sampler(k)`` returns ``k`` i.i.d. chunks (tuples of token ids; shorter than ``K`` only when a
    row sampled EOS, which is kept as the last id). Draws come from `generate` with default
    `SamplingParams` (temperature 1, every truncation off), ``block`` rows per generate call. Each
    call gets a fresh seed derived from the sampler's ``seed`` and a call counter
    (``numpy.random.SeedSequence([seed, counter])``), so a seeded sampler asked the same sequence of
    ``k`` returns the same chunks.

    Attributes:
        ids: the prompt's token ids (chat template applied when ``chat``).
        calls: chunks drawn so far; ``counts``: how often each chunk was drawn (the empirical ``P``,
            used by `estimated_probs`); ``blocks``: generate calls made.

    Args:
        runtime: a `Runtime` (e.g. `temperance.models.load(...)`); its tokenizer encodes text prompts.
        prompt: text, or a sequence of token ids.
        chunk_tokens: ``K >= 1``.
        seed: int in ``[0, 2^63)`` or None (a random base seed is drawn once).
        chat: wrap a text prompt as one user message with the chat template.
        block: most rows per generate call (memory bound: ``block x vocab`` logits per step).
    """

    def __init__(self, runtime: Any, prompt, chunk_tokens: int = 1, *, seed: int | None = None,
                 chat: bool = False, block: int = 256):
        _check_int("chunk_tokens", chunk_tokens, 1)
        _check_int("block", block, 1)
        _check_seed(seed)
        self.runtime, self.chunk_tokens, self.block = runtime, int(chunk_tokens), int(block)
        self.ids = _prompt_ids(runtime, prompt, chat, self.chunk_tokens)
        self.seed = int(seed) if seed is not None else int(np.random.SeedSequence().generate_state(1, np.uint64)[0] >> 2)
        self.blocks = 0
        self.calls = 0
        self.counts: Counter = Counter()

    def _next_seed(self) -> int:
        state = np.random.SeedSequence([self.seed, self.blocks]).generate_state(1, np.uint64)[0]
        self.blocks += 1
        return int(state) % _SEED_SPACE

    def __call__(self, k: int = 1) -> list[tuple[int, ...]]:
        _check_int("k", k, 1)
        out: list[tuple[int, ...]] = []
        while len(out) < k:
            m = min(self.block, k - len(out))
            out += _draw_chunks(self.runtime, self.ids, m, self.chunk_tokens, 1.0, self._next_seed())
        self.calls += k
        self.counts.update(out)
        return out

    def estimated_probs(self) -> dict[tuple[int, ...], float]:
        """The empirical chunk distribution of every draw made so far (an estimate of ``P``: chunks
        never drawn get probability 0)."""
        if not self.calls:
            raise TemperanceError("no draws yet: the chunk distribution cannot be estimated")
        return {c: n / self.calls for c, n in self.counts.items()}


def logit_tempered(runtime: Any, prompt, chunk_tokens: int, temperature: float, n: int,
                   seed: int | None = None, *, chat: bool = False, block: int = 256) -> list[tuple[int, ...]]:
    """``n`` chunks drawn with ordinary logit temperature ``T`` (our `generate`, per-token
    ``softmax(logits / T)``). For ``K > 1`` this is NOT ``P^(1/T) / Z`` on chunks (see the module)."""
    _check_int("chunk_tokens", chunk_tokens, 1)
    _check_int("n", n, 1)
    _check_int("block", block, 1)
    _check_seed(seed)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not math.isfinite(temperature) or temperature < 0:
        raise TemperanceError(f"temperature must be a finite number >= 0, got {temperature!r}")
    ids = _prompt_ids(runtime, prompt, chat, chunk_tokens)
    base = seed if seed is not None else int(np.random.SeedSequence().generate_state(1, np.uint64)[0] >> 2)
    out: list[tuple[int, ...]] = []
    counter = 0
    while len(out) < n:
        m = min(block, n - len(out))
        s = int(np.random.SeedSequence([base, counter, 1]).generate_state(1, np.uint64)[0]) % _SEED_SPACE
        out += _draw_chunks(runtime, ids, m, chunk_tokens, float(temperature), s)
        counter += 1
    return out


@torch.no_grad()
def chunk_distribution(runtime: Any, prompt, chunk_tokens: int, *, top: int | None = None,
                       chat: bool = False, block: int = 256) -> dict[tuple[int, ...], float]:
    """``P(chunk)`` from the model's logits, by enumeration (for small vocabularies or small ``top``).

    Every prefix is extended by every token (``top=None``; ``V^K`` chunks) or by its ``top`` most
    likely tokens; EOS ends a chunk early. With ``top`` the result covers only part of the mass (its
    sum says how much). Probabilities are float64 products of the raw (temperature-1) softmax.
    """
    _check_int("chunk_tokens", chunk_tokens, 1)
    _check_int("block", block, 1)
    if top is not None:
        _check_int("top", top, 1)
    ids = _prompt_ids(runtime, prompt, chat, chunk_tokens)
    eos = set(int(t) for t in getattr(runtime, "eos_token_ids", ()) or ())
    done: dict[tuple[int, ...], float] = {}
    frontier: list[tuple[tuple[int, ...], float]] = [((), 0.0)]
    for step in range(chunk_tokens):
        nxt: list[tuple[tuple[int, ...], float]] = []
        for i in range(0, len(frontier), block):
            part = frontier[i:i + block]
            logits = runtime.prefill([ids + list(p) for p, _ in part]).double()
            logp = torch.log_softmax(logits, dim=-1)
            if top is not None and top < logp.shape[-1]:
                vals, toks = logp.topk(top, dim=-1)
            else:
                toks = torch.arange(logp.shape[-1]).expand_as(logp)
                vals = logp
            for (p, lp), tk, vs in zip(part, toks.tolist(), vals.tolist()):
                for t, v in zip(tk, vs):
                    c = p + (t,)
                    if t in eos or step == chunk_tokens - 1:
                        done[c] = done.get(c, 0.0) + math.exp(lp + v)
                    else:
                        nxt.append((c, lp + v))
        frontier = nxt
    if hasattr(runtime, "reset"):
        runtime.reset()
    return done


def tempered_distribution(probs: Mapping[Hashable, float], temperature: float) -> dict[Hashable, float]:
    """``P^(1/T) / Z`` over the given outcomes (normalised over them only)."""
    if not (isinstance(temperature, (int, float)) and 0 < temperature < math.inf):
        raise TemperanceError(f"temperature must be > 0, got {temperature!r}")
    w = {x: p ** (1 / temperature) for x, p in probs.items() if p > 0}
    z = sum(w.values())
    if not z > 0:
        raise TemperanceError("probs has no positive mass")
    return {x: v / z for x, v in w.items()}


def total_variation(a: Mapping[Hashable, float], b: Mapping[Hashable, float]) -> float:
    """``1/2 sum |a - b|`` over the union of keys; counts are normalised first."""
    sa, sb = sum(a.values()), sum(b.values())
    if not (sa > 0 and sb > 0):
        raise TemperanceError("total_variation needs two non-empty distributions")
    return 0.5 * sum(abs(a.get(x, 0) / sa - b.get(x, 0) / sb) for x in set(a) | set(b))


@dataclass
class Comparison:
    """`compare`'s result: the two histograms (chunk -> count), their TV distance and the cost."""

    tempered: Counter
    logit: Counter
    tv: float
    calls_per_sample: float
    results: list[Tempered] = field(repr=False, default_factory=list)
    sampler: ChunkSampler | None = field(repr=False, default=None)


def compare(runtime: Any, prompt, chunk_tokens: int, temperature: float, samples: int, *,
            method: str = "exact", batch_size: int = 200, seed: int | None = None, chat: bool = False,
            block: int = 256, max_calls: int | None = None) -> Comparison:
    """Histograms of ``K``-token continuations under CALM-style tempering vs logit temperature.

    ``temper_many(ChunkSampler(...), T)`` samples the tempered *joint* ``P(chunk)^(1/T) / Z``; logit
    temperature tempers each token's *conditional* (one normaliser per prefix). They agree for
    ``K = 1`` and in general differ for ``K > 1``, so a large ``tv`` at ``K > 1`` is expected, not a
    bug. Both sides are seeded from ``seed``.
    """
    _check_int("samples", samples, 1)
    if method not in METHODS:
        raise TemperanceError(f"method must be one of {', '.join(map(repr, METHODS))}, got {method!r}")
    _check_seed(seed)
    sampler = ChunkSampler(runtime, prompt, chunk_tokens, seed=seed, chat=chat, block=block)
    rs = temper_many(sampler, temperature, samples, method=method, batch_size=batch_size, seed=seed,
                     vectorized=True, max_calls=max_calls, block_size=max(block, 1) * 16)
    tempered = Counter(r.outcome for r in rs)
    logit = Counter(logit_tempered(runtime, prompt, chunk_tokens, float(temperature), samples,
                                   seed=seed, chat=chat, block=block))
    return Comparison(tempered, logit, total_variation(tempered, logit),
                      sum(r.calls for r in rs) / samples, rs, sampler)


# ------------------------------------------------------------------------------------------------
# CLI: `temperance implicit ...` (registered by cli.build_parser through `add_parser`).


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``implicit`` subcommand on an argparse ``subparsers`` object; return its parser."""
    from .runtime import default_threads

    p = subparsers.add_parser(
        "implicit", help="likelihood-free temperature on K-token chunks (CALM's Algorithms 1-2)",
        description="Sample K-token continuations at temperature T from draws alone (no logits), "
                    "as CALM does, and report the cost in base-sampler calls.")
    p.add_argument("--prompt", required=True, help="the prompt text")
    p.add_argument("--model", default="smollm2", help="model name or path (default smollm2)")
    p.add_argument("--chunk-tokens", "-K", type=int, default=2, help="K, tokens per chunk (default 2)")
    p.add_argument("--temperature", "-T", type=_temperature_arg, default=0.5,
                   help="T in (0, 1], a number or a fraction such as 1/3 (default 0.5); 1/T within "
                        "0.5%% of an integer is snapped to it (0.333 -> 1/3)")
    p.add_argument("--method", choices=METHODS, default="exact",
                   help="exact (Algorithm 1) or batch (Algorithm 2, integer 1/T)")
    p.add_argument("--batch-size", type=int, default=200, help="N for --method batch (default 200)")
    p.add_argument("--samples", type=int, default=20, help="tempered samples to draw (default 20)")
    p.add_argument("--seed", type=int, default=None, help="seed (reproducible when set)")
    p.add_argument("--threads", type=int, default=default_threads(),
                   help=f"torch threads (default {default_threads()})")
    p.add_argument("--chat", action="store_true", help="apply the chat template to the prompt")
    p.add_argument("--block", type=int, default=256, help="rows per generate call (default 256)")
    p.set_defaults(func=cmd_implicit)
    return p


def _temperature_arg(text: str) -> float:
    from fractions import Fraction

    try:
        return float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"not a number or fraction: {text!r}") from None


def cmd_implicit(args: argparse.Namespace) -> int:
    """Handler of ``temperance implicit``: draw, then print the chunks and the cost."""
    from rich.console import Console
    from rich.table import Table

    from . import models

    _check_int("--samples", args.samples, 1)
    _check_int("--chunk-tokens", args.chunk_tokens, 1)
    _check_int("--batch-size", args.batch_size, 1)
    _check_int("--threads", args.threads, 1)
    if not args.prompt:
        raise TemperanceError("--prompt is empty")
    if not (math.isfinite(args.temperature) and 0 < args.temperature <= 1):
        raise TemperanceError(f"--temperature must be in (0, 1] for a black-box sampler, got {args.temperature}")
    T = args.temperature
    if abs(1 / T - round(1 / T)) <= 5e-3 * round(1 / T):   # 0.333 -> 1/3, for Algorithm 2
        T = 1 / round(1 / T)
    try:
        runtime = models.load(args.model, threads=args.threads)
    except models.ModelError as e:
        raise TemperanceError(str(e)) from None
    sampler = ChunkSampler(runtime, args.prompt, args.chunk_tokens, seed=args.seed, chat=args.chat,
                           block=args.block)
    t0 = time.perf_counter()
    rs = temper_many(sampler, T, args.samples, method=args.method, batch_size=args.batch_size,
                     seed=args.seed, vectorized=True, block_size=args.block * 16)
    dt = time.perf_counter() - t0

    tok = runtime.tokenizer
    console = Console()
    counts = Counter(r.outcome for r in rs)
    table = Table(title=f"{args.samples} tempered {args.chunk_tokens}-token continuations at T = {args.temperature:g} "
                        f"({args.method}) of {args.prompt!r}", title_justify="left")
    table.add_column("continuation")
    table.add_column("token ids", style="dim")
    table.add_column("count", justify="right")
    table.add_column("freq", justify="right")
    for chunk, c in counts.most_common():
        text = tok.decode(list(chunk), skip_special_tokens=False) if tok is not None else ""
        table.add_row(repr(text), " ".join(map(str, chunk)), str(c), f"{c / args.samples:.3f}")
    console.print(table)

    measured = sum(r.calls for r in rs) / args.samples
    console.print(f"cost: {measured:.2f} base-sampler calls per sample (measured; {sampler.calls} chunks "
                  f"drawn in {sampler.blocks} generate calls, {dt:.2f} s, {dt / args.samples * 1e3:.1f} ms "
                  "per sample)")
    if args.method == "exact":
        est = np.array(list(sampler.estimated_probs().values()))
        est = est / est.sum()
        thm2 = expected_calls(est, T)
        early = expected_calls(est, T, early_exit=True)
        console.print(f"Theorem 2: {thm2:.2f} calls per sample (all n Stage-1 draws; {early:.2f} with early "
                      f"exit, what runs) -- ESTIMATE: P taken as the empirical distribution of the "
                      f"{sampler.calls} draws ({len(sampler.counts)} distinct chunks; unseen chunks ignored)")
    else:
        console.print(f"batch mode (Algorithm 2): fixed cost N = {args.batch_size} calls per sample")
    return 0

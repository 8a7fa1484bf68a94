"""generate: prompts in, events out — a short driver over `engine.Engine`.

    prompts → ids → Engine.add (one request per prompt) → Engine.step until no row is left

`generate(...)` is a Python generator of `Event`s, one per sampled token per row; `generate_text`
collects them (it is the same loop, consumed). Rows (see `engine` for the step itself):

- one row per (request, sample): a request's prompt is prefilled once and forked `n` times with
  `runtime.select`; sample `s` gets seed `request seed + s`, so a seeded request is reproducible
  and its samples differ from each other.
- each row keeps its own `SamplingParams`. Rows that share a sampler order (`params.chain`) run in
  one `Chain` on one `Batch`; rows with another order form another group. Tokens are scattered
  back into row order before the runtime decodes them.
- history (what penalties and DRY see) is prompt + generated tokens.
- a finished row is dropped from the runtime, the batch and the row states (one `select`).

Finish reasons follow OpenAI: "stop" for an EOS token or a stop string, "length" at `max_tokens`
(or when the row reaches the model's `max_context`). The EOS token itself is yielded (its text is
empty) and counted in the completion's tokens, as `model.generate` does; a stop string is never
part of the text.

Tiny example (random weights; token-id prompts, so no tokenizer is needed for the ids):

>>> import torch
>>> from transformers import LlamaConfig, LlamaForCausalLM
>>> from temperance.runtime.hf import HFRuntime
>>> _ = torch.manual_seed(0)
>>> cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
...                   num_attention_heads=2, num_key_value_heads=1, eos_token_id=None)
>>> rt = HFRuntime(LlamaForCausalLM(cfg))
>>> class Digits:  # toy tokenizer: token i reads as "<i>"
...     def decode(self, ids, **kw): return "".join(f"<{i}>" for i in ids)
>>> out = generate_text(rt, [[1, 2, 3]], SamplingParams(temperature=0), max_tokens=3, tokenizer=Digits())
>>> len(out[0][0].tokens), out[0][0].finish_reason
(3, 'length')
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch

from .engine import Engine, Event, Request
from .errors import TemperanceError
from .ops.dry import expand_sequence_breakers
from .params import SamplingParams
from .stopping import StopStrings

__all__ = ["Event", "Completion", "generate", "generate_text", "encode_prompts", "dry_breakers_for"]


@dataclass
class Completion:
    """One finished sample of one request (what `generate_text` returns)."""

    text: str = ""
    tokens: list[int] = dataclasses.field(default_factory=list)
    logprobs: list[float] = dataclasses.field(default_factory=list)
    finish_reason: str | None = None

    def add(self, e: Event) -> None:
        """Fold one event of this sample in."""
        self.text += e.text
        self.tokens.append(e.token)
        self.logprobs.append(e.logprob)
        self.finish_reason = e.finish_reason


def encode_prompts(tokenizer: Any, prompts: Sequence[str | Sequence[int]], *, chat: bool = False,
                   max_context: int | None = None) -> list[list[int]]:
    """Turn prompts (strings or token-id lists) into id lists; raise TemperanceError on bad ones."""
    out = []
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            if not p:
                raise TemperanceError(f"prompt {i} is empty")
            if tokenizer is None:
                raise TemperanceError("text prompts need a tokenizer (the runtime has none)")
            if chat:
                try:
                    ids = list(tokenizer.apply_chat_template([{"role": "user", "content": p}]))
                except ValueError as e:
                    raise TemperanceError(str(e)) from None
            else:
                ids = list(tokenizer.encode(p))
        else:
            if chat:
                raise TemperanceError("chat=True needs text prompts, not token ids")
            ids = [int(t) for t in p]
        if not ids:
            raise TemperanceError(f"prompt {i} has no tokens")
        if max_context is not None and len(ids) >= max_context:
            raise TemperanceError(f"prompt {i} has {len(ids)} tokens; the model's max_context is "
                                  f"{max_context} (prompt + output)")
        out.append(ids)
    return out


def dry_breakers_for(params: Sequence[SamplingParams], tokenizer: Any) -> list[list[tuple[int, ...]]] | None:
    """DRY's string breakers as token-id sequences per row (expanded once per distinct list)."""
    if not any(p.active("dry") for p in params):
        return None
    cache: dict[tuple[str, ...], list[tuple[int, ...]]] = {}
    out = []
    for p in params:
        if not p.active("dry") or not p.dry_sequence_breakers:
            out.append([])
            continue
        if p.dry_sequence_breakers not in cache:
            if tokenizer is None:
                raise TemperanceError("DRY sequence breakers are strings: they need a tokenizer")
            cache[p.dry_sequence_breakers] = expand_sequence_breakers(
                p.dry_sequence_breakers, tokenizer.token_texts(),
                lambda s: tokenizer.encode(s, add_special_tokens=False))
        out.append(cache[p.dry_sequence_breakers])
    return out


def generate(runtime: Any, prompts: Sequence[str | Sequence[int]],
             params: SamplingParams | Sequence[SamplingParams] = SamplingParams(), *,
             max_tokens: int | Sequence[int] = 64, min_tokens: int | Sequence[int] = 0, n: int = 1,
             stop: Sequence[str] | Sequence[Sequence[str]] = (),
             chat: bool = False, top_n: int = 0, raw_logprobs: bool = False,
             tokenizer: Any = None, constraint: Any = None,
             ban_phrases: Any = None) -> Iterator[Event]:
    """Stream `Event`s for every (prompt, sample) row until each row finishes.

    A driver over `engine.Engine`: every prompt is one request, added before the first step.

    Args:
        runtime: a `Runtime` (`prefill`, `decode`, `select`, `eos_token_ids`, `max_context`).
        prompts: strings (encoded with the tokenizer) or token-id lists; a single string is one
            prompt.
        params: one `SamplingParams` for all prompts, or one per prompt.
        max_tokens: most tokens per row (finish "length"); one value, or one per prompt.
        min_tokens: EOS tokens are banned until a row has this many tokens; one value, or one per
            prompt.
        n: samples per prompt (seeds `seed + 0 .. seed + n-1`; an unseeded request draws its seed
            from torch's global RNG).
        stop: stop strings (matched on decoded text, across token boundaries; never emitted): one
            list for every prompt, or one list per prompt.
        chat: wrap each text prompt as one user message and apply the model's chat template.
        top_n: also report the top-n processed candidates of each step.
        raw_logprobs: also report each token's logprob under the unprocessed logits (after the
            min_tokens EOS ban).
        tokenizer: defaults to `runtime.tokenizer`.
        constraint: a `constrain.Constraint` (JSON schema, regex, grammar, choices) for every
            prompt, or one per prompt (None = free). Its mask applies first, before min_tokens and
            the chain; EOS is allowed only where the grammar accepts. A row at `max_tokens` ends
            with "length" even if the grammar is incomplete.
        ban_phrases: a list of strings or an `antislop.PhraseBans`: when a row's text comes to
            contain one, the row rewinds to the token where it began, bans that token there and
            goes on (see `antislop`). Such rows' events are held back until safe. A rewind drops
            that row's cache entries (`runtime.truncate`); no row is prefilled again.
    """
    tokenizer = tokenizer if tokenizer is not None else getattr(runtime, "tokenizer", None)
    if isinstance(prompts, str):
        prompts = [prompts]
    if not prompts:
        raise TemperanceError("generate needs at least one prompt")
    max_req = _per_prompt("max_tokens", max_tokens, len(prompts))
    min_req = _per_prompt("min_tokens", min_tokens, len(prompts))
    for name, vs, lo in (("max_tokens", max_req, 1), ("min_tokens", min_req, 0), ("n", [n], 1),
                         ("top_n", [top_n], 0)):
        for v in vs:
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise TemperanceError(f"{name} must be an integer >= {lo}, got {v!r}")
    if isinstance(params, SamplingParams):
        params = [params] * len(prompts)
    params = list(params)
    if len(params) != len(prompts):
        raise TemperanceError(f"got {len(params)} SamplingParams for {len(prompts)} prompts")
    if stop and not isinstance(stop, str) and all(isinstance(x, (list, tuple)) for x in stop):
        if len(stop) != len(prompts):
            raise TemperanceError(f"got {len(stop)} stop lists for {len(prompts)} prompts")
        stop_req = [tuple(x) for x in stop]
    else:
        stop_req = [tuple(stop)] * len(prompts)
    for s in stop_req:
        StopStrings(s)  # validates the stop strings
    ids = encode_prompts(tokenizer, prompts, chat=chat, max_context=getattr(runtime, "max_context", None))
    if constraint is not None and hasattr(constraint, "row"):
        constraint = [constraint] * len(prompts)
    if constraint is not None:
        constraint = list(constraint)
        if len(constraint) != len(prompts):
            raise TemperanceError(f"got {len(constraint)} constraints for {len(prompts)} prompts")
    bans = None
    if ban_phrases is not None:
        from .antislop import PhraseBans
        bans = ban_phrases if isinstance(ban_phrases, PhraseBans) else PhraseBans(ban_phrases)

    # Request r's samples get seeds (request seed) + 0 .. n-1.
    drawn = torch.randint(0, 2**62, (len(prompts),), dtype=torch.int64).tolist()
    engine = Engine(runtime, tokenizer)
    for r, p in enumerate(ids):
        seeded = params[r] if params[r].seed is not None else dataclasses.replace(params[r], seed=drawn[r])
        engine.add(Request(p, seeded, n=n, max_tokens=max_req[r], min_tokens=min_req[r], stop=stop_req[r],
                           constraint=constraint[r] if constraint is not None else None,
                           ban_phrases=bans, top_n=top_n, raw_logprobs=raw_logprobs))
    while engine.has_work():
        yield from engine.step()


def _per_prompt(name: str, value: Any, n: int) -> list:
    """One value for every prompt, or a sequence with one per prompt."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise TemperanceError(f"got {len(value)} values of {name} for {n} prompts")
        return list(value)
    return [value] * n


def generate_text(runtime: Any, prompts: Sequence[str | Sequence[int]],
                  params: SamplingParams | Sequence[SamplingParams] = SamplingParams(),
                  **kwargs: Any) -> list[list[Completion]]:
    """Run `generate` to the end; return `[request][sample] -> Completion`."""
    if isinstance(prompts, str):
        prompts = [prompts]
    n = kwargs.get("n", 1)
    out = [[Completion() for _ in range(n)] for _ in prompts]
    for e in generate(runtime, prompts, params, **kwargs):
        out[e.request][e.sample].add(e)
    return out

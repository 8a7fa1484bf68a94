"""generate: the decoding loop and nothing else.

    prompts → ids → prefill → [ban EOS (min_tokens) → chain per group → pick → detok → stop check
    → yield events → drop finished rows → decode] until every row is done

`generate(...)` is a Python generator of `Event`s, one per sampled token per row; `generate_text`
collects them (it is the same loop, consumed). Rows:

- one row per (request, sample): a request's prompt is prefilled once and forked `n` times with
  `runtime.select`; sample `s` gets seed `request seed + s`, so a seeded request is reproducible
  and its samples differ from each other.
- each row keeps its own `SamplingParams`. Rows that share a sampler order (`params.chain`) run in
  one `Chain` on one `Batch`; rows with another order form another group. Tokens are scattered
  back into row order before the runtime decodes them.
- history (what penalties and DRY see) is prompt + generated tokens.
- a finished row is dropped from the runtime, its group's batch and its group's chain (`select`).

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

from .batch import Batch
from .chain import Chain
from .detok import Detokenizer
from .errors import TemperanceError
from .ops.dry import expand_sequence_breakers
from .params import SamplingParams
from .stopping import StopStrings

__all__ = ["Event", "Completion", "generate", "generate_text", "encode_prompts", "dry_breakers_for"]


@dataclass(frozen=True)
class Event:
    """One sampled token of one row."""

    request: int                  # index of the prompt
    sample: int                   # index among the request's n samples
    token: int
    text: str                     # text delta this token releases (may be "")
    logprob: float                # log q(token) under the processed distribution
    raw_logprob: float | None     # log p(token) under the model's logits (raw_logprobs=True)
    top: list[tuple[int, float]] | None  # top_n (token, processed logprob), when top_n > 0
    finish_reason: str | None     # None while running, then "stop" or "length"


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


class _Group:
    """Rows sharing one sampler order: one Chain, one Batch, and their positions in the runtime."""

    def __init__(self, rows: list[int], batch: Batch, chain: Chain):
        self.rows = rows                          # positions in the runtime's current rows
        self.batch = batch
        self.chain = chain


def generate(runtime: Any, prompts: Sequence[str | Sequence[int]],
             params: SamplingParams | Sequence[SamplingParams] = SamplingParams(), *,
             max_tokens: int | Sequence[int] = 64, min_tokens: int | Sequence[int] = 0, n: int = 1,
             stop: Sequence[str] | Sequence[Sequence[str]] = (),
             chat: bool = False, top_n: int = 0, raw_logprobs: bool = False,
             tokenizer: Any = None, constraint: Any = None,
             ban_phrases: Any = None) -> Iterator[Event]:
    """Stream `Event`s for every (prompt, sample) row until each row finishes.

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
            goes on (see `antislop`). Such rows' events are held back until safe. A rewind
            re-prefills the live rows (prompt + kept tokens): the `Runtime` has no per-row cache
            truncation.
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
        stop_req = [StopStrings(x) if x else None for x in stop]  # validates the stop strings
    else:
        stop_req = [StopStrings(stop) if stop else None] * len(prompts)
    max_context = getattr(runtime, "max_context", None)
    ids = encode_prompts(tokenizer, prompts, chat=chat, max_context=max_context)
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

    # Rows: request r, sample s, at row r * n + s, with seed (request seed) + s.
    drawn = torch.randint(0, 2**62, (len(prompts),), dtype=torch.int64).tolist()
    row_req = [r for r in range(len(prompts)) for _ in range(n)]
    row_sample = [s for _ in range(len(prompts)) for s in range(n)]
    row_params = [dataclasses.replace(params[r], seed=((params[r].seed if params[r].seed is not None
                                                        else drawn[r]) + s) % 2**63)
                  for r, s in zip(row_req, row_sample)]
    history = [ids[r] for r in row_req]
    breakers = dry_breakers_for(row_params, tokenizer)
    eos = sorted(int(t) for t in getattr(runtime, "eos_token_ids", ()) or ())
    detoks = [Detokenizer(tokenizer, ids[r]) if tokenizer is not None else None for r in row_req]
    row_stops = [stop_req[r].copy() if stop_req[r] else None for r in row_req]
    row_max = [max_req[r] for r in row_req]
    row_min = [min_req[r] for r in row_req]
    count = [0] * len(row_req)
    row_cons = ([constraint[r].row(runtime) if constraint[r] is not None else None for r in row_req]
                if constraint is not None else [None] * len(row_req))
    row_bans = [bans.row() for _ in row_req] if bans is not None else None
    gen: list[list[int]] = [[] for _ in row_req]   # kept tokens per row (for rewinds)
    live = list(range(len(row_req)))              # original row id of each runtime row

    by_order: dict[tuple[str, ...], list[int]] = {}
    for i, p in enumerate(row_params):
        by_order.setdefault(p.chain, []).append(i)
    groups = {order: _Group(rows, Batch(
        [row_params[i] for i in rows], history=[history[i] for i in rows],
        dry_breakers=[breakers[i] for i in rows] if breakers is not None else None),
        Chain(list(order))) for order, rows in by_order.items()}

    def _push_banned(r: int, tok: int, ev: Event) -> Iterator[Event | str]:
        """A row with phrase bans: hold the token, rewind on a hit, release what is safe."""
        d, s, rb = detoks[r], row_stops[r], row_bans[r]
        is_eos = tok in eos
        delta = (d.flush() if is_eos else d.push(tok)) if d is not None else ""
        at_limit = count[r] >= row_max[r] or (
            max_context is not None and len(history[r]) + count[r] >= max_context)
        if not is_eos and at_limit and d is not None:
            delta += d.flush()
        k = rb.push(tok, delta, dataclasses.replace(ev, text=delta))
        if k is not None:
            dropped = gen[r][k:]
            del gen[r][k:]
            count[r] = k
            if row_cons[r] is not None:
                row_cons[r].rollback(sum(1 for t in dropped if t not in eos))
            if tokenizer is not None:
                detoks[r] = Detokenizer(tokenizer, ids[row_req[r]] + gen[r])
            yield "rewind"
            return
        final = is_eos or at_limit
        out = rb.release(final)
        for i, e in enumerate(out):
            text, hit = e.text, False
            if s is not None:
                text, hit = s.push(text)
                if i == len(out) - 1 and final and not hit:
                    text += s.flush()
            finish = "stop" if hit or (is_eos and i == len(out) - 1) else (
                "length" if i == len(out) - 1 and final else None)
            yield dataclasses.replace(e, text=text, finish_reason=finish)
            if hit:
                return

    logits = runtime.prefill(ids)                                            # [R, V]
    if n > 1:
        runtime.select(torch.arange(len(prompts)).repeat_interleave(n))
        logits = logits.repeat_interleave(n, dim=0)                          # [R*n, V]

    while live:
        B, V = logits.shape
        eos_cols = torch.tensor([t for t in eos if t < V], dtype=torch.int64)
        constrained = []
        for j, r in enumerate(live):  # constraint masks first: grammar, then banned phrase starts
            c = row_cons[r]
            if c is not None:
                allowed = c.mask(V)
                allowed[eos_cols] = c.accepting()
                if c.stopped():
                    allowed[:] = False
                    allowed[eos_cols] = True
                logits[j].masked_fill_(~allowed, float("-inf"))
                constrained.append((j, r, f"the {c.spec}"))
                if not bool(torch.isfinite(logits[j]).any()):
                    raise TemperanceError(f"row {r} (request {row_req[r]}, sample {row_sample[r]}) "
                                          f"has no token left after the {c.spec}")
            if row_bans is not None:
                ban = row_bans[r].banned_at(count[r])
                if ban:
                    cols = torch.tensor([t for t in ban if t < V], dtype=torch.int64)
                    old = logits[j, cols].clone()
                    logits[j, cols] = float("-inf")
                    if not bool(torch.isfinite(logits[j]).any()):
                        logits[j, cols] = old  # every alternative is banned: accept the phrase
        if any(row_min) and eos:
            young = torch.tensor([count[r] < row_min[r] for r in live])
            if bool(young.any()):
                logits[young.nonzero().view(-1)[:, None], eos_cols[None, :]] = float("-inf")
                for j, r, why in constrained:
                    if not bool(torch.isfinite(logits[j]).any()):
                        raise TemperanceError(
                            f"row {r} (request {row_req[r]}, sample {row_sample[r]}) has no token "
                            f"left after the {why} and the min_tokens EOS ban")
        tokens = torch.empty(B, dtype=torch.int64)
        logp, raw = torch.empty(B), torch.full((B,), float("nan"))
        top_ids = top_lp = None
        if top_n:
            k = min(top_n, V)
            top_ids, top_lp = torch.empty(B, k, dtype=torch.int64), torch.empty(B, k)
        for g in groups.values():
            idx = torch.tensor(g.rows, dtype=torch.int64)
            picked = g.chain.sample(logits[idx], g.batch, raw_logprobs=raw_logprobs, top_n=top_n)
            tokens[idx], logp[idx] = picked.tokens.cpu(), picked.logprob.float().cpu()
            if picked.raw_logprob is not None:
                raw[idx] = picked.raw_logprob.float().cpu()
            if top_n:
                kk = picked.top_ids.shape[1]
                top_ids[idx, :kk], top_lp[idx, :kk] = picked.top_ids.cpu(), picked.top_logprobs.float().cpu()
                top_ids[idx, kk:], top_lp[idx, kk:] = -1, float("-inf")

        keep: list[int] = []
        rewound: list[int] = []
        for j, r in enumerate(live):
            tok = int(tokens[j])
            count[r] += 1
            gen[r].append(tok)
            if row_cons[r] is not None and tok not in eos:
                row_cons[r].accept(tok)
            if row_bans is not None:
                top = None
                if top_n:
                    top = [(int(t), float(v)) for t, v in zip(top_ids[j].tolist(), top_lp[j].tolist()) if t >= 0]
                ev = Event(row_req[r], row_sample[r], tok, "", float(logp[j]),
                           None if not raw_logprobs else float(raw[j]), top, None)
                done = False
                for out in _push_banned(r, tok, ev):
                    if out == "rewind":
                        rewound.append(r)
                        break
                    done = done or out.finish_reason is not None
                    yield out
                if not done:
                    keep.append(j)
                continue
            finish, text = None, ""
            d, s = detoks[r], row_stops[r]
            if tok in eos:
                finish = "stop"
                if d is not None:
                    text = d.flush()
                    if s is not None:
                        text = s.push(text)[0] + s.flush()
            else:
                delta = d.push(tok) if d is not None else ""
                if s is not None:
                    text, hit = s.push(delta)
                    finish = "stop" if hit else None
                else:
                    text = delta
                at_limit = count[r] >= row_max[r] or (
                    max_context is not None and len(history[r]) + count[r] >= max_context)
                if finish is None and at_limit:
                    finish = "length"
                    tail = d.flush() if d is not None else ""
                    if s is not None:
                        more, hit = s.push(tail)
                        text += more if hit else more + s.flush()
                        finish = "stop" if hit else "length"
                    else:
                        text += tail
            top = None
            if top_n:
                top = [(int(t), float(v)) for t, v in zip(top_ids[j].tolist(), top_lp[j].tolist()) if t >= 0]
            yield Event(row_req[r], row_sample[r], tok, text, float(logp[j]),
                        None if not raw_logprobs else float(raw[j]), top, finish)
            if finish is None:
                keep.append(j)

        # Move every group one step on, then keep only the unfinished rows everywhere.
        for g in groups.values():
            g.batch = g.batch.append(tokens[torch.tensor(g.rows, dtype=torch.int64)])
        if rewound:
            # A rewind: rebuild every live row's batch state and runtime cache from its prompt +
            # kept tokens (a stop inside held text may have finished other rows too).
            live = [live[j] for j in keep]
            if not live:
                return
            by_order = {}
            for pos, r in enumerate(live):
                by_order.setdefault(row_params[r].chain, []).append(pos)
            groups = {}  # (fresh chains: mirostat's mu restarts after a rewind)
            for order, rows in by_order.items():
                rs = [live[p] for p in rows]
                groups[order] = _Group(rows, Batch(
                    [row_params[r] for r in rs], history=[history[r] + gen[r] for r in rs],
                    step=torch.tensor([count[r] for r in rs], dtype=torch.int64),
                    dry_breakers=[breakers[r] for r in rs] if breakers is not None else None),
                    Chain(list(order)))
            logits = runtime.prefill([ids[row_req[r]] + gen[r] for r in live])
            continue
        if len(keep) < B:
            if not keep:
                return
            runtime.select(torch.tensor(keep, dtype=torch.int64))
            new_pos = {old: new for new, old in enumerate(keep)}
            for key in list(groups):
                g = groups[key]
                local = [i for i, row in enumerate(g.rows) if row in new_pos]
                if not local:
                    del groups[key]
                    continue
                li = torch.tensor(local, dtype=torch.int64)
                g.batch, g.chain = g.batch.select(li), g.chain.select(li)
                g.rows = [new_pos[g.rows[i]] for i in local]
            live = [live[j] for j in keep]
            tokens = tokens[torch.tensor(keep, dtype=torch.int64)]
        logits = runtime.decode(tokens)


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

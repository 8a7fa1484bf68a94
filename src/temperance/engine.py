"""Engine: one step-wise decoder under every strategy; requests join and leave between steps.

    add(request) -> id        a request waits; it joins the running batch at the next step
    step() -> [Event]         admit → masks → strategy → select → accept → events → decode
    abort(id)                 its rows leave at the next step
    has_work()

This is the shape of vLLM's and llama.cpp's servers: one batch of rows, one runtime cache, and
everything that decides tokens is a step over that batch. A *row* is one (request, sample) or one
beam; a request's prompt is prefilled once (`runtime.join` splices it into the running cache) and
forked into its rows with `select`.

**One verb moves every per-row state.** A strategy returns, for its rows, the next tokens and the
row each one continues (`parent`); the engine gathers one index over the whole batch and applies it
with the same `select` to the runtime's cache, the `Batch`, the mirostat state and the row objects
(`Row.fork` where a row is repeated). Rows that finished or were aborted are left out of that
index, so they leave before the next decode.

Strategies (the request's ``strategy``):

- ``None``: sampling, the request's `Chain` and `pick` (rows that share a sampler order run in one
  chain call), with mirostat's ``mu`` in a `states.MirostatState` that follows the rows;
- a `search.BeamSettings`: beam search, diverse and constrained variants (`search.BeamSearch`);
- a `search.Contrastive`: contrastive search, on hidden states the runtime returns (`hidden()`).

Masks apply before any strategy, per row: the grammar constraint (EOS only where it accepts),
phrase bans at the rewound position, then the ``min_tokens`` EOS ban. For beams the masks apply to
the log-probabilities (transformers' order), for sampling to the logits.

Phrase-ban rewinds call `runtime.truncate`: the rewound row's cache drops the rewound entries and
the row is fed its last kept token in the same decode as every other row; no row is prefilled
again. A runtime without `truncate` re-prefills the live rows instead; one without `join` admits
new requests only into an empty batch.

Events: sampling and contrastive rows yield one `Event` per token as it is accepted (rows with
phrase bans hold theirs until safe). A beam request's text is known only at the end (a later step
may reorder the beams), so it yields its returned hypotheses, token by token, when it finishes:
``sample`` is the hypothesis' rank.

Device: every tensor the engine makes follows the logits' device; `Batch` is built on it.

Tiny example (random weights, token-id prompts): a request joins while another runs.

>>> import torch
>>> from transformers import LlamaConfig, LlamaForCausalLM
>>> from temperance.runtime.hf import HFRuntime
>>> _ = torch.manual_seed(0)
>>> cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
...                   num_attention_heads=2, num_key_value_heads=1, eos_token_id=None)
>>> eng = Engine(HFRuntime(LlamaForCausalLM(cfg)))
>>> a = eng.add(Request([1, 2, 3], SamplingParams(temperature=0), max_tokens=3))
>>> [e.request for e in eng.step()]
[0]
>>> b = eng.add(Request([4, 5], SamplingParams(temperature=0), n=2, max_tokens=2))
>>> [(e.request, e.sample) for e in eng.step()], len(eng.rows)      # b joined: 1 + 2 rows
([(0, 0), (1, 0), (1, 1)], 3)
>>> [(e.request, e.finish_reason) for e in eng.step()], eng.has_work()
([(0, 'length'), (1, 'length'), (1, 'length')], False)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from .batch import Batch
from .chain import Chain
from .detok import Detokenizer
from .errors import TemperanceError
from .params import SamplingParams
from .states import MirostatState
from .stopping import StopStrings

__all__ = ["Engine", "Request", "Event", "Row"]


@dataclass(frozen=True)
class Event:
    """One token of one row."""

    request: int                  # the request's id (generate: the prompt's index)
    sample: int                   # index among the request's n samples (beams: hypothesis rank)
    token: int
    text: str                     # text delta this token releases (may be "")
    logprob: float                # log q(token) under the processed distribution
    raw_logprob: float | None     # log p(token) under the model's logits (raw_logprobs=True)
    top: list[tuple[int, float]] | None  # top_n (token, processed logprob), when top_n > 0
    finish_reason: str | None     # None while running, then "stop" or "length"


@dataclass
class Request:
    """What `Engine.add` takes: one prompt and everything the loop must do with it."""

    prompt: list[int]
    params: SamplingParams = SamplingParams()
    n: int = 1
    max_tokens: int = 64
    min_tokens: int = 0
    stop: Sequence[str] = ()
    constraint: Any = None        # a constrain.Constraint
    ban_phrases: Any = None       # an antislop.PhraseBans
    top_n: int = 0
    raw_logprobs: bool = False
    strategy: Any = None          # None (sampling), search.BeamSettings or search.Contrastive
    dry_breakers: Any = None      # DRY breakers as token ids (expanded by the caller)
    id: int = -1
    aborted: bool = False
    done: bool = False
    search: Any = None            # the strategy's per-request state
    live: int = 0                 # rows of this request in the batch


class Row:
    """One row: its detokenizer, stop matcher, constraint, phrase bans, counters and limits.

    Verbs: `fork()` (a copy for a repeated `select`), `push(token, event)` (accept a token: the
    events it releases, or a rewind), `rollback(k)` (forget everything after generated token k).
    """

    __slots__ = ("req", "sample", "detok", "stops", "cons", "bans", "count", "gen", "finished",
                 "limit", "eos", "tokenizer")

    def __init__(self, req: Request, sample: int, tokenizer: Any, eos: frozenset, limit: int, cons: Any):
        self.req, self.sample, self.eos, self.tokenizer = req, sample, eos, tokenizer
        self.detok = Detokenizer(tokenizer, req.prompt) if tokenizer is not None else None
        self.stops = StopStrings(req.stop) if req.stop else None
        self.cons = cons
        self.bans = req.ban_phrases.row() if req.ban_phrases is not None else None
        self.count = 0                 # generated tokens kept so far
        self.gen: list[int] = []       # those tokens (for rewinds)
        self.finished = False
        self.limit = limit             # most tokens: max_tokens, or what the context leaves

    def fork(self) -> Row:
        new = Row.__new__(Row)
        for k in Row.__slots__:
            setattr(new, k, getattr(self, k))
        new.detok = self.detok.copy() if self.detok is not None else None
        new.stops = self.stops.copy() if self.stops is not None else None
        new.cons = self.cons.fork() if self.cons is not None else None
        new.gen = list(self.gen)
        return new

    def mask(self, x: Tensor, j: int, eos_cols: Tensor) -> None:
        """Apply this row's constraint and phrase bans to its logits ``x[j]`` (in place)."""
        c = self.cons
        if c is not None:
            allowed = c.mask(x.shape[1]).to(x.device)
            allowed[eos_cols] = c.accepting()
            if c.stopped():
                allowed[:] = False
                allowed[eos_cols] = True
            x[j].masked_fill_(~allowed, float("-inf"))
            if not bool(torch.isfinite(x[j]).any()):
                raise TemperanceError(f"row {j} (request {self.req.id}, sample {self.sample}) has no "
                                      f"token left after the {c.spec}")
        if self.bans is not None:
            ban = [t for t in self.bans.banned_at(self.count) if t < x.shape[1]]
            if ban:
                cols = torch.tensor(ban, dtype=torch.int64, device=x.device)
                old = x[j, cols].clone()
                x[j, cols] = float("-inf")
                if not bool(torch.isfinite(x[j]).any()):
                    x[j, cols] = old  # every alternative is banned: accept the phrase

    def accept(self, tok: int) -> None:
        """Count a token and advance the constraint (no text, no events)."""
        self.count += 1
        self.gen.append(tok)
        if self.cons is not None and tok not in self.eos:
            self.cons.accept(tok)

    def follow(self, tok: int) -> None:
        """Accept a token silently, text included (a beam: its text is told at the end)."""
        self.accept(tok)
        if self.detok is not None and tok not in self.eos:
            delta = self.detok.push(tok)
            if self.stops is not None:
                self.stops.push(delta)

    def push(self, tok: int, ev: Event) -> list[Event] | int:
        """Accept ``tok``; return the events it releases, or the position to rewind to (bans)."""
        self.accept(tok)
        is_eos = tok in self.eos
        d = self.detok
        delta = (d.flush() if is_eos else d.push(tok)) if d is not None else ""
        at_limit = self.count >= self.limit
        if not is_eos and at_limit and d is not None:
            delta += d.flush()
        final = is_eos or at_limit
        if self.bans is not None:
            k = self.bans.push(tok, delta, dataclasses.replace(ev, text=delta))
            if k is not None:
                return k
            entries = self.bans.release(final)
        else:
            entries = [dataclasses.replace(ev, text=delta)]
        out = []
        for i, e in enumerate(entries):
            last = i == len(entries) - 1
            text, hit = e.text, False
            if self.stops is not None:
                text, hit = self.stops.push(text)
                if last and final and not hit:
                    text += self.stops.flush()
            finish = "stop" if hit or (is_eos and last) else ("length" if last and final else None)
            out.append(dataclasses.replace(e, text=text, finish_reason=finish))
            if hit:
                break
        self.finished = bool(out) and out[-1].finish_reason is not None
        return out

    def rollback(self, k: int) -> int:
        """Forget the generated tokens after the first ``k``; return how many were dropped."""
        dropped = self.gen[k:]
        del self.gen[k:]
        self.count = k
        if self.cons is not None:
            self.cons.rollback(sum(1 for t in dropped if t not in self.eos))
        if self.tokenizer is not None:
            self.detok = Detokenizer(self.tokenizer, self.req.prompt + self.gen)
        return len(dropped)


class Engine:
    """Step-wise decoding over one runtime; see the module docstring.

    Args:
        runtime: a `Runtime` (`prefill`, `decode`, `select`; `join` and `truncate` when rows join
            a running batch or rewind; `hidden` for contrastive search).
        tokenizer: for text (detokenizer, stop strings); defaults to `runtime.tokenizer`.
        max_rows: most rows in the batch; a request that does not fit waits (None = no limit).
    """

    def __init__(self, runtime: Any, tokenizer: Any = None, *, max_rows: int | None = None):
        self.runtime = runtime
        self.tokenizer = tokenizer if tokenizer is not None else getattr(runtime, "tokenizer", None)
        self.eos = frozenset(int(t) for t in (getattr(runtime, "eos_token_ids", ()) or ()))
        self.max_context = getattr(runtime, "max_context", None)
        self.max_rows = max_rows
        self.pending: list[Request] = []
        self.rows: list[Row] = []
        self.batch: Batch | None = None
        self.mirostat: MirostatState | None = None
        self.logits: Tensor | None = None        # [B, V] next-token logits of the rows
        self.requests: dict[int, Request] = {}
        self.steps = 0                           # decode steps so far (for stats and tests)
        self._next_id = 0
        self._chains: dict[tuple, Chain] = {}

    # -- the four verbs ---------------------------------------------------------------------------
    def add(self, request: Request) -> int:
        """Queue a request (validated here); it joins at the next step. Returns its id."""
        _check_request(request, self)
        if request.params.seed is None:  # drawn from torch's global RNG: torch.manual_seed repeats it
            request.params = dataclasses.replace(request.params, seed=int(torch.randint(0, 2**62, ())))
        if request.dry_breakers is None and request.params.active("dry"):
            from .generate import dry_breakers_for
            request.dry_breakers = dry_breakers_for([request.params], self.tokenizer)[0]
        request.id = self._next_id
        self._next_id += 1
        self.requests[request.id] = request
        self.pending.append(request)
        return request.id

    def abort(self, rid: int) -> None:
        """Stop request ``rid``: its rows leave at the next step (no more events)."""
        req = self.requests.get(rid)
        if req is not None:
            req.aborted = True
            if req in self.pending:
                self.pending.remove(req)
                self._forget(req)

    def has_work(self) -> bool:
        return bool(self.rows) or bool(self.pending)

    def step(self) -> list[Event]:
        """One decoding step for every row; new requests join first, aborted ones leave."""
        self._leave([i for i, r in enumerate(self.rows) if r.req.aborted])
        self._admit()
        if not self.rows:
            return []
        from .search import decide

        x = self.logits
        B, V = x.shape
        eos_cols = torch.tensor(sorted(t for t in self.eos if t < V), dtype=torch.int64, device=x.device)
        beams = [j for j, r in enumerate(self.rows) if r.req.strategy is not None]
        if beams:  # beams score log-probabilities; masks then apply to those (as transformers)
            x = x.clone()
            b = torch.tensor(beams, dtype=torch.int64, device=x.device)
            x[b] = torch.log_softmax(x[b].float(), dim=-1)
        self._mask(x, eos_cols)
        d = decide(self, x)                      # index [B'] and tokens [B'] for the next batch
        index, tokens = d.index, d.tokens
        events, rows, keep, fed, rewind = self._accept(d)
        events += d.after
        identity = d.rows == list(range(len(self.rows)))
        self.batch = (self.batch if identity else self.batch.select(index)).append(tokens)
        if self.mirostat is not None and not identity:
            self.mirostat.select(index)
        if rewind:
            self._rewind_batch(rewind)
        self._move(d.rows, keep, rows)
        if not self.rows:
            self.logits = None
            return events
        tokens = fed[torch.tensor(keep, dtype=torch.int64, device=fed.device)]
        if rewind and not hasattr(self.runtime, "truncate"):
            self.logits = self.runtime.prefill([r.req.prompt + r.gen for r in self.rows])
        else:
            if rewind:
                drop = torch.zeros(len(self.rows), dtype=torch.int64, device=fed.device)
                for new, old in enumerate(keep):
                    drop[new] = rewind.get(old, 0)
                self.runtime.truncate(drop)
            self.logits = self.runtime.decode(tokens)
        self.steps += 1
        return events

    def _accept(self, d) -> tuple[list[Event], list[Row], list[int], Tensor, dict[int, int]]:
        """Fork repeated rows, then let each new row take its token: the events, the new rows,
        the positions that stay, what each row is fed next, and the rewinds (position → cache
        entries to drop)."""
        fed = d.tokens.clone()                   # what each row is fed next (a rewind changes it)
        rewind: dict[int, int] = {}
        events: list[Event] = []
        keep: list[int] = []
        rows = [self.rows[i] for i in d.rows]
        seen: set[int] = set()
        for pos, i in enumerate(d.rows):          # fork repeated rows
            if i in seen:
                rows[pos] = rows[pos].fork()
            seen.add(i)
        for pos, row in enumerate(rows):
            out = d.emit.get(pos)
            if out is not None:
                res = row.push(*out)
                if isinstance(res, int):          # a phrase ban hit: rewind, feed the last kept token
                    rewind[pos] = row.rollback(res)
                    fed[pos] = row.gen[-1] if row.gen else row.req.prompt[-1]
                    keep.append(pos)
                    continue
                events.extend(res)
                if row.finished:
                    continue
            elif pos in d.silent:
                row.follow(int(d.tokens[pos]))
            if not row.req.done and not row.req.aborted:
                keep.append(pos)
        return events, rows, keep, fed, rewind

    # -- rows joining and leaving -----------------------------------------------------------------
    def _admit(self) -> None:
        """Prefill waiting requests into the running batch (each prompt once, then forked)."""
        if not self.pending or (self.rows and not hasattr(self.runtime, "join")):
            return
        take, room = [], (self.max_rows - len(self.rows)) if self.max_rows else None
        for req in list(self.pending):
            w = _width(req)
            if room is not None and w > room and (take or self.rows):
                break
            take.append(req)
            if room is not None:
                room -= w
        if not take:
            return
        self.pending = [r for r in self.pending if r not in take]
        prompts = [r.prompt for r in take]
        logits = self.runtime.join(prompts) if self.rows else self.runtime.prefill(prompts)
        fan = torch.tensor([_width(r) for r in take], device=logits.device)
        logits = logits.repeat_interleave(fan, dim=0)
        old = len(self.rows)
        fork = torch.cat([torch.arange(old, device=logits.device),
                          old + torch.arange(len(take), device=logits.device).repeat_interleave(fan)])
        if bool((fan > 1).any()):
            self.runtime.select(fork)
        new_rows: list[Row] = []
        for req in take:
            limit = req.max_tokens
            if self.max_context is not None:
                limit = min(limit, self.max_context - len(req.prompt))
            for s in range(_width(req)):
                cons = req.constraint.row(self.runtime) if req.constraint is not None else None
                new_rows.append(Row(req, s if req.strategy is None else 0, self.tokenizer, self.eos, limit, cons))
            req.live = _width(req)
            if req.strategy is not None:
                from .search import start
                req.search = start(req, self, logits.device)
        self.logits = logits if self.logits is None else torch.cat([self.logits, logits])
        self._grow(new_rows)

    def _grow(self, new_rows: list[Row]) -> None:
        """Append rows to the batch (and to the mirostat state)."""
        dev = self.logits.device
        params = [_row_params(r) for r in new_rows]
        hist = [r.req.prompt for r in new_rows]
        dry = [r.req.dry_breakers or [] for r in new_rows]
        add = Batch(params, history=hist, seed=torch.tensor([p.seed for p in params], dtype=torch.int64),
                    dry_breakers=dry, device=dev)
        old = self.batch if self.rows else None
        self.batch = add if old is None else _concat(old, add)
        if self.batch.active("mirostat"):
            mu = MirostatState(add).mu
            if old is not None:
                mu = torch.cat([(self.mirostat or MirostatState(old)).mu, mu])
            self.mirostat = MirostatState(self.batch, mu)
        elif old is None:
            self.mirostat = None
        self.rows = self.rows + new_rows

    def _leave(self, gone: list[int]) -> None:
        """Rows ``gone`` (aborted requests) leave the runtime, the batch and the row list."""
        if not gone:
            return
        keep = [i for i in range(len(self.rows)) if i not in set(gone)]
        k = torch.tensor(keep, dtype=torch.int64, device=self.logits.device)
        self.logits = self.logits[k] if keep else None
        self._move(list(range(len(self.rows))), keep, self.rows)

    def _move(self, index: list[int], keep: list[int], rows: list[Row]) -> None:
        """Keep positions ``keep`` of the new rows ``rows`` (which continue rows ``index``): one
        `select` of ``index[keep]`` for the runtime; the batch and mirostat state (already on
        ``rows``) keep ``keep``; requests with no row left are done."""
        full = [index[i] for i in keep]
        dev = self.batch.device
        if len(keep) < len(rows):
            k = torch.tensor(keep, dtype=torch.int64, device=dev)
            self.batch = self.batch.select(k) if keep else None
            if self.mirostat is not None:
                self.mirostat = self.mirostat.select(k) if keep else None
        if full != list(range(len(self.rows))):
            self.runtime.select(torch.tensor(full, dtype=torch.int64, device=dev))
        counted: dict[int, int] = {}
        for i in keep:
            counted[rows[i].req.id] = counted.get(rows[i].req.id, 0) + 1
        for req in {r.req.id: r.req for r in self.rows}.values():
            req.live = counted.get(req.id, 0)
            if req.live == 0:
                self._forget(req)
        self.rows = [rows[i] for i in keep]

    def _forget(self, req: Request) -> None:
        req.done = True
        self.requests.pop(req.id, None)

    def _rewind_batch(self, rewind: dict[int, int]) -> None:
        """Rows that rewound drop their last tokens from the history and the step counter."""
        b = self.batch
        drop = torch.zeros(len(b), dtype=torch.int64, device=b.history.device)
        for pos, k in rewind.items():
            drop[pos] = k
        L = b.history.shape[1]
        src = torch.arange(L, device=drop.device)[None, :] - drop[:, None]
        hist = torch.where(src >= 0, b.history.gather(1, src.clamp(min=0)), -1)
        self.batch = Batch(b.params, history=hist, step=b.step - drop, seed=b.seed,
                           dry_breakers=b.dry_breakers, device=b.device)
        if self.mirostat is not None:
            self.mirostat.rollback(drop.nonzero().view(-1), self.batch)

    # -- masks and sampling -----------------------------------------------------------------------
    def _mask(self, x: Tensor, eos_cols: Tensor) -> None:
        """Constraints, phrase bans, then the min_tokens EOS ban, per row, in place."""
        for j, r in enumerate(self.rows):
            if r.cons is not None or r.bans is not None:
                r.mask(x, j, eos_cols)
        if eos_cols.numel():
            young = [j for j, r in enumerate(self.rows) if r.count < r.req.min_tokens]
            if young:
                y = torch.tensor(young, dtype=torch.int64, device=x.device)
                x[y[:, None], eos_cols[None, :]] = float("-inf")
                for j in young:
                    if self.rows[j].cons is not None and not bool(torch.isfinite(x[j]).any()):
                        r = self.rows[j]
                        raise TemperanceError(
                            f"row {j} (request {r.req.id}, sample {r.sample}) has no token left "
                            f"after the {r.cons.spec} and the min_tokens EOS ban")

    def sample(self, x: Tensor, rows: list[int]) -> tuple[Tensor, list[Event]]:
        """Sampling rows ``rows``: the chain and pick per sampler order; tokens [len(rows)] and
        one event (no text yet) per row."""
        dev = x.device
        idx_all = torch.tensor(rows, dtype=torch.int64, device=dev)
        n = len(rows)
        tokens = torch.empty(n, dtype=torch.int64, device=dev)
        logp = torch.empty(n, device=dev)
        raw = torch.full((n,), float("nan"), device=dev)
        top_n = max(self.rows[j].req.top_n for j in rows)
        raw_lp = any(self.rows[j].req.raw_logprobs for j in rows)
        k = min(top_n, x.shape[1])
        top_ids = torch.full((n, k), -1, dtype=torch.int64, device=dev)
        top_lp = torch.full((n, k), float("-inf"), device=dev)
        groups: dict[tuple, list[int]] = {}
        for pos, j in enumerate(rows):
            groups.setdefault(self.rows[j].req.params.chain, []).append(pos)
        whole = len(groups) == 1 and n == len(self.rows)
        for order, local in groups.items():
            chain = self._chains.setdefault(order, Chain(list(order)))
            li = torch.tensor(local, dtype=torch.int64, device=dev)
            gi = idx_all[li]
            batch = self.batch if whole else self.batch.select(gi)
            state = None
            if self.mirostat is not None:
                state = self.mirostat if whole else MirostatState(batch, self.mirostat.mu[gi])
            picked = chain.sample(x if whole else x[gi], batch, state=state, raw_logprobs=raw_lp, top_n=top_n)
            if state is not None and not whole:
                self.mirostat.mu = self.mirostat.mu.clone()
                self.mirostat.mu[gi] = state.mu
            tokens[li], logp[li] = picked.tokens.to(dev), picked.logprob.float().to(dev)
            if picked.raw_logprob is not None:
                raw[li] = picked.raw_logprob.float().to(dev)
            if top_n:
                kk = picked.top_ids.shape[1]
                top_ids[li, :kk], top_lp[li, :kk] = picked.top_ids.to(dev), picked.top_logprobs.float().to(dev)
        events = []
        tl, lpl, rawl = tokens.tolist(), logp.tolist(), raw.tolist()
        ti, tv = (top_ids.tolist(), top_lp.tolist()) if top_n else (None, None)
        for pos, j in enumerate(rows):
            r = self.rows[j]
            top = ([(t, v) for t, v in zip(ti[pos][:r.req.top_n], tv[pos][:r.req.top_n]) if t >= 0]
                   if r.req.top_n else None)
            events.append(Event(r.req.id, r.sample, tl[pos], "", lpl[pos],
                                rawl[pos] if r.req.raw_logprobs else None, top, None))
        return tokens, events


# -- helpers ---------------------------------------------------------------------------------------

def _width(req: Request) -> int:
    """Rows a request takes: n samples, or its beams, or its contrastive candidates (from 1)."""
    from .search import width
    return req.n if req.strategy is None else width(req.strategy)


def _row_params(row: Row) -> SamplingParams:
    p = row.req.params
    return dataclasses.replace(p, seed=(p.seed + row.sample) % 2**63)


def _concat(a: Batch, b: Batch) -> Batch:
    """Rows of ``a`` then rows of ``b`` as one Batch (histories right-aligned, -1 padded)."""
    L = max(a.history.shape[1], b.history.shape[1])
    pad = lambda h: torch.cat([h.new_full((h.shape[0], L - h.shape[1]), -1), h], dim=1)  # noqa: E731
    dry = None
    if a.dry_breakers is not None or b.dry_breakers is not None:
        dry = list(a.dry_breakers or [[]] * len(a)) + list(b.dry_breakers or [[]] * len(b))
    return Batch(a.params + b.params, history=torch.cat([pad(a.history), pad(b.history)]),
                 step=torch.cat([a.step, b.step]), seed=torch.cat([a.seed, b.seed]),
                 dry_breakers=dry, device=a.device)


def _check_request(req: Request, engine: Engine) -> None:
    for name, v, lo in (("max_tokens", req.max_tokens, 1), ("min_tokens", req.min_tokens, 0),
                        ("n", req.n, 1), ("top_n", req.top_n, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise TemperanceError(f"{name} must be an integer >= {lo}, got {v!r}")
    if not req.prompt:
        raise TemperanceError("a request needs at least one prompt token")
    if not isinstance(req.params, SamplingParams):
        raise TemperanceError(f"params must be a SamplingParams, got {type(req.params).__name__}")
    if engine.max_context is not None and len(req.prompt) >= engine.max_context:
        raise TemperanceError(f"prompt has {len(req.prompt)} tokens; the model's max_context is "
                              f"{engine.max_context} (prompt + output)")
    if req.stop:
        StopStrings(req.stop)  # validates
    if req.strategy is not None:
        from .search import check_strategy
        check_strategy(req)

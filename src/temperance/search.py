"""search: per-step search strategies — beam search (plain, sampled, diverse, constrained) and
contrastive search — on any `Runtime` (`prefill` / `decode` / `select`).

Beam search follows transformers' `_beam_search` (the vectorised rewrite of #35802) exactly:

- a request's prompt is prefilled once and forked into `W` rows; the running scores start at
  `[0, -1e9, ...]`, so step 1 only expands the first copy;
- each step takes the top `K = max(2, 1 + #eos) * W` continuations of all `W × V`
  (`beam_step`, the one pure function of the strategy), or samples `K` of them without
  replacement and orders them best first (beam sampling: the `Chain` runs on the log-probs first,
  as HF's logits processors);
- a continuation that ends (EOS, or the token budget) *and* ranks among the first `W` enters the
  finished pool with score `sum_logprobs / generated_len ** length_penalty` (generated_len counts
  the EOS); the pool keeps the best `W`;
- the next running beams are the best `W` continuations that did not end;
- `early_stopping`: True → stop once `W` hypotheses are finished; False → stop when the best
  running score divided by the current length cannot beat the worst finished one; "never" → the
  same test with `max_tokens` as the denominator when `length_penalty > 0` (exact).

The loop owns all per-row state and moves it with one `index`: `runtime.select(index)`,
`batch.select(index)`, `chain.select(index)`. A "unit" is one beam search of width `W` over
`W` contiguous runtime rows: one per request, or one per (request, group) for diverse beam search.

Diverse beam search (Vijayakumar et al.): groups of `W / G` beams are expanded in order; group `g`
scores `log p − λ · (how many beams of groups < g chose the token at this step)`, and that penalty
stays in its running score (as HF's `HammingDiversityLogitsProcessor`). Each group keeps its own
pool; the request returns the best of all pools.

Constrained beam search (Post & Vilar 2018, HF's "banks"): candidates are the usual top-`K` plus,
for each beam, every token that advances an unmet constraint; they are grouped into banks by
constraint progress and taken round-robin (best of the highest bank, best of the next, ...), so
both fluent and constraint-advancing beams survive. EOS is only allowed once every constraint is met.

Contrastive search (Su et al. 2022): among the top-k tokens, pick
`argmax (1 − α) p(v) − α max_j cos(h_v, h_j)`; `h_v` comes from running the k candidates one step
(the chosen candidate's cache row is then kept, so no step is run twice).

Toy example (a 4-token LM whose next token depends only on the last one; token 0 is EOS):

>>> import torch
>>> class Toy:
...     eos_token_ids = {0}
...     table = torch.tensor([[0., 0, 0, 0], [0, -3, 2, 1], [2, 0, -3, 1], [1, 2, 0, -3]])
...     def prefill(self, prompts): self.rows = len(prompts); return self.table[[p[-1] for p in prompts]]
...     def decode(self, tokens): return self.table[tokens]
...     def select(self, index): pass
>>> [(h.tokens, round(h.score, 3)) for h in beam_search(Toy(), [[1]], BeamSettings(beams=2), max_tokens=4)[0]]
[([2, 0], -0.412)]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from .batch import Batch
from .chain import Chain
from .errors import TemperanceError
from .params import SamplingParams

__all__ = ["BeamSettings", "Hypothesis", "beam_step", "beam_search", "contrastive_search",
           "add_search_flags", "search_requested", "run_search_from_args"]

NEG = -1.0e9  # HF's "impossible" score (kept finite so that sums stay ordered)


@dataclass(frozen=True)
class BeamSettings:
    """Per-request beam search settings (transformers' names in brackets).

    constraints: each constraint is a tuple of alternatives (token-id tuples); one alternative is a
    phrasal constraint [PhrasalConstraint], several a disjunctive one [DisjunctiveConstraint].
    sample: beam sampling [do_sample=True]: the request's chain runs on the log-probs and the K
    continuations are drawn without replacement from softmax(running + processed log-probs).
    """

    beams: int = 4                          # [num_beams]
    length_penalty: float = 1.0             # [length_penalty]
    early_stopping: bool | str = False      # [early_stopping]: True, False or "never"
    num_return_sequences: int = 1           # [num_return_sequences]
    groups: int = 1                         # [num_beam_groups]
    diversity_penalty: float = 0.0          # [diversity_penalty]
    constraints: tuple[tuple[tuple[int, ...], ...], ...] = ()
    sample: bool = False

    def check(self) -> None:
        def bad(msg: str) -> TemperanceError:
            return TemperanceError(f"beam settings: {msg}")
        if isinstance(self.beams, bool) or not isinstance(self.beams, int) or self.beams < 1:
            raise bad(f"beams must be an integer >= 1, got {self.beams!r}")
        if self.early_stopping not in (True, False, "never"):
            raise bad(f"early_stopping must be True, False or 'never', got {self.early_stopping!r}")
        if not 1 <= self.num_return_sequences <= self.beams:
            raise bad(f"num_return_sequences must be in [1, beams={self.beams}]")
        if self.groups < 1 or self.beams % self.groups:
            raise bad(f"groups ({self.groups}) must divide beams ({self.beams})")
        if self.diversity_penalty < 0:
            raise bad("diversity_penalty must be >= 0")
        if self.constraints and (self.sample or self.groups > 1):
            raise bad("constraints work with plain beam search only (no sampling, no groups)")
        for c in self.constraints:
            if not c or any(len(alt) == 0 for alt in c):
                raise bad("a constraint needs at least one non-empty token sequence")


@dataclass
class Hypothesis:
    """One returned sequence: generated tokens (EOS included), its length-penalised score."""

    tokens: list[int]
    score: float
    finish_reason: str            # "stop" (EOS) or "length"
    text: str = ""
    group: int = 0


# -- the strategy core ---------------------------------------------------------------------------

def beam_step(logprobs: Tensor, running: Tensor, k: int, *, sample: bool = False,
              generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """One beam step for N independent searches of width W: the K best (or K sampled) continuations.

    Args:
        logprobs: [N, W, V] this step's (processed) log-probs of every running beam.
        running: [N, W] accumulated scores of the running beams (NEG for unused beams).
        k: how many continuations to return (HF: `max(2, 1 + #eos) * W`, so that W survive even
            if the best ones all end).
        sample: draw the K without replacement from softmax(running + logprobs) (HF beam-sample)
            instead of taking the top K.

    Returns:
        (scores, tokens, parents), each [N, K], best first (for `sample`: the K drawn, best first):
        the accumulated score of each continuation, its new token, and the beam (0..W-1) it extends.
    """
    N, W, V = logprobs.shape
    # Every continuation of every beam in one row per search: [N, W*V], flat index = beam*V + token.
    total = (logprobs + running[:, :, None]).reshape(N, W * V)
    k = min(k, W * V)
    if sample:
        # HF: multinomial over the softmax of the accumulated scores, then their scores gathered.
        idx = torch.multinomial(total.softmax(-1), k, generator=generator)      # [N, K]
        # Then best first, as plain beam search: the first W may finish (the classic 4.x
        # `_beam_sample` and transformers >= 5.24; the vectorised code before 5.24 kept draw order).
        scores, order = total.gather(1, idx).sort(dim=-1, descending=True, stable=True)
        idx = idx.gather(1, order)
    else:
        scores, idx = total.topk(k, dim=-1)                                        # [N, K], sorted
    # Split the flat index back into (beam, token).
    return scores, idx % V, torch.div(idx, V, rounding_mode="floor")


# -- constraints ----------------------------------------------------------------------------------

def _progress(seq: Sequence[int], alts: Sequence[tuple[int, ...]]) -> tuple[bool, int, list[int]]:
    """(met, progress, next tokens) of one constraint on generated tokens `seq`.

    met: some alternative occurs contiguously in `seq`. Otherwise progress is the longest prefix of
    an alternative that ends `seq` (a wrong token falls back to the longest still-valid prefix),
    and the next tokens are those that extend some alternative's current prefix (or start one).
    """
    best, nxt = 0, set()
    for alt in alts:
        n = len(alt)
        for i in range(0, len(seq) - n + 1):
            if tuple(seq[i:i + n]) == alt:
                return True, max(len(a) for a in alts), []
        p = 0
        for m in range(min(n - 1, len(seq)), 0, -1):
            if tuple(seq[len(seq) - m:]) == alt[:m]:
                p = m
                break
        best = max(best, p)
        nxt.add(alt[p])
        nxt.add(alt[0])
    return False, best, sorted(nxt)


def _constraint_state(seq: Sequence[int], constraints) -> tuple[bool, int, list[int]]:
    """All constraints met?, total progress (the bank), tokens that advance an unmet one."""
    met_all, total, nxt = True, 0, set()
    for alts in constraints:
        met, p, tokens = _progress(seq, alts)
        met_all &= met
        total += p
        nxt.update(tokens)
    return met_all, total, sorted(nxt)


def _constrained_candidates(total: Tensor, seqs: list[list[int]], running: Tensor, k: int,
                            constraints, eos: set[int]) -> tuple[Tensor, Tensor, Tensor]:
    """Banked candidate order for one constrained unit: total [W, V] accumulated scores."""
    W, V = total.shape
    vals, idx = total.reshape(-1).topk(min(k, W * V))
    cands = {(int(i) // V, int(i) % V): float(v) for v, i in zip(vals, idx)}
    for b in range(W):                       # tokens that advance an unmet constraint
        if float(running[b]) <= NEG / 2:
            continue                          # an unused beam (step 1 copies, dead padding)
        for t in _constraint_state(seqs[b], constraints)[2]:
            if t < V:
                cands.setdefault((b, t), float(total[b, t]))
    banks: dict[int, list[tuple[float, int, int]]] = {}
    dead: list[tuple[float, int, int]] = []   # continuations of unused beams: last, whatever bank
    for (b, t), v in cands.items():
        if v <= NEG / 2:
            dead.append((v, b, t))
            continue
        met, prog, _ = _constraint_state(seqs[b] + [t], constraints)
        if t in eos and not met:
            continue                          # may only finish once every constraint is met
        banks.setdefault(prog, []).append((v, b, t))
    # Round robin over banks, highest progress first: best of each bank, then second best, ...
    order = [sorted(banks[p], key=lambda x: -x[0]) for p in sorted(banks, reverse=True)]
    out: list[tuple[float, int, int]] = []
    for r in range(max((len(o) for o in order), default=0)):
        out += [o[r] for o in order if r < len(o)]
    out += sorted(dead, key=lambda x: -x[0])
    out = out[:max(k, W)]
    return (torch.tensor([o[0] for o in out]), torch.tensor([o[2] for o in out], dtype=torch.int64),
            torch.tensor([o[1] for o in out], dtype=torch.int64))


# -- the loop -------------------------------------------------------------------------------------

def _banked(s: BeamSettings) -> bool:
    """Does this request take the constrained (banked) step? (Tests force it with no constraints.)"""
    return bool(s.constraints)


class _Unit:
    """One beam search of width W over W contiguous runtime rows (its own finished pool)."""

    def __init__(self, req: int, group: int, width: int, s: BeamSettings, gen: torch.Generator | None):
        self.req, self.group, self.W, self.s, self.gen = req, group, width, s, gen
        self.running = torch.full((width,), NEG)
        self.running[0] = 0.0
        self.seqs: list[list[int]] = [[] for _ in range(width)]
        self.pool: list[tuple[float, list[int], str]] = []      # finished: (score, tokens, reason)
        self.fallback: list[tuple[float, list[int], str]] = []  # length-ended, constraints unmet
        self.improvable = True                                  # HF's early-stop heuristic flag
        self.done = False
        self.tokens = torch.zeros(width, dtype=torch.int64)     # tokens to decode next
        self.parents = torch.arange(width)

    def update(self, scores: Tensor, tokens: Tensor, parents: Tensor, gen_len: int, at_max: bool,
               eos: set[int], max_tokens: int) -> None:
        """Split K ordered continuations into finished ones (pool) and the next W running beams."""
        s, W = self.s, self.W
        lp = s.length_penalty
        tok, par = tokens.tolist(), parents.tolist()
        ends = torch.tensor([at_max or t in eos for t in tok])
        # Only the first W continuations may finish (the rest are spares, so that W keep running).
        full = len(self.pool) >= W
        if self.improvable and not (full and s.early_stopping is True):
            for i in range(min(W, len(tok))):
                if not bool(ends[i]):
                    continue
                seq = self.seqs[par[i]] + [tok[i]]
                reason = "stop" if tok[i] in eos else "length"
                score = float(scores[i]) / gen_len ** lp
                if s.constraints and not _constraint_state(seq, s.constraints)[0]:
                    self.fallback.append((score, seq, reason))
                    continue
                self.pool.append((score, seq, reason))
            self.pool.sort(key=lambda h: -h[0])
            del self.pool[W:]
        # Next running beams: the best W that did not end (ended ones sink by NEG, as in HF).
        adjusted = scores + ends.to(scores.dtype) * NEG
        keep = adjusted.topk(min(W, len(tok))).indices if not _banked(s) else \
            torch.argsort(ends.to(torch.int8), stable=True)[:W]        # keep the bank order
        n = len(keep)
        if n < W:  # fewer candidates than beams (tiny vocabularies): pad with dead beams
            keep = torch.cat([keep, keep[:1].repeat(W - n)])
        self.running = adjusted[keep].clone()
        self.running[n:] = 2 * NEG
        self.tokens, self.parents = tokens[keep], parents[keep]
        self.seqs = [self.seqs[int(p)] + [int(t)] for p, t in zip(self.parents, self.tokens)]
        # HF's heuristic: can the best running beam still beat the worst finished one?
        L = max_tokens if (s.early_stopping == "never" and lp > 0) else gen_len
        worst = min(h[0] for h in self.pool) if len(self.pool) >= W else NEG
        self.improvable = self.improvable and float(self.running.max()) / L ** lp > worst
        self.done = (not self.improvable or (len(self.pool) >= W and s.early_stopping is True)
                     or bool(ends.all()))


def beam_search(runtime: Any, prompts: Sequence[str | Sequence[int]],
                settings: BeamSettings | Sequence[BeamSettings] = BeamSettings(),
                params: SamplingParams | Sequence[SamplingParams] = SamplingParams(), *,
                max_tokens: int = 64, chat: bool = False, tokenizer: Any = None) -> list[list[Hypothesis]]:
    """Beam search every prompt; return `[request] -> num_return_sequences` best `Hypothesis`es.

    Args:
        runtime: a `Runtime` (`prefill`, `decode`, `select`, `eos_token_ids`).
        prompts: strings (need a tokenizer) or token-id lists.
        settings: one `BeamSettings` for all prompts or one per prompt.
        params: the chain's settings (used only by beam sampling, `settings.sample`); one or per
            prompt; a request's `seed` seeds its draws. Sampling requests must share one order.
        max_tokens: most new tokens per hypothesis (HF `max_new_tokens`).
    """
    from .generate import encode_prompts

    tokenizer = tokenizer if tokenizer is not None else getattr(runtime, "tokenizer", None)
    if isinstance(prompts, str):
        prompts = [prompts]
    if not prompts:
        raise TemperanceError("beam_search needs at least one prompt")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise TemperanceError(f"max_tokens must be an integer >= 1, got {max_tokens!r}")
    R = len(prompts)
    settings = [settings] * R if isinstance(settings, BeamSettings) else list(settings)
    params = [params] * R if isinstance(params, SamplingParams) else list(params)
    if len(settings) != R or len(params) != R:
        raise TemperanceError("give one BeamSettings / SamplingParams for all prompts or one per prompt")
    for s in settings:
        s.check()
    max_context = getattr(runtime, "max_context", None)
    ids = encode_prompts(tokenizer, prompts, chat=chat, max_context=max_context)
    if max_context is not None:
        max_tokens_r = [min(max_tokens, max_context - len(p)) for p in ids]
    else:
        max_tokens_r = [max_tokens] * R
    eos = {int(t) for t in (getattr(runtime, "eos_token_ids", ()) or ())}
    n_eos = len(eos)

    # Units: one per (request, group), W = beams / groups rows each, in request-then-group order.
    units: list[_Unit] = []
    for r, s in enumerate(settings):
        gen = None
        if s.sample:
            seed = params[r].seed if params[r].seed is not None else int(torch.randint(0, 2**62, ()))
            gen = torch.Generator().manual_seed(seed)
        for g in range(s.groups):
            units.append(_Unit(r, g, s.beams // s.groups, s, gen))

    logits = runtime.prefill(ids)                                                  # [R, V]
    # Fork each prompt into its units' rows (HF: expand to num_beams; only copy 0 is live).
    index = torch.tensor([u.req for u in units for _ in range(u.W)], dtype=torch.int64)
    runtime.select(index)
    logits = logits[index]
    sampling = any(s.sample for s in settings)
    batch = chain = None
    if sampling:
        row_params = [params[int(r)] for r in index]
        batch = Batch(row_params, history=[ids[int(r)] for r in index])
        chain = Chain.for_batch(batch)

    live = units
    step = 0
    while live:
        step += 1
        V = logits.shape[1]
        logprobs = torch.log_softmax(logits.float(), dim=-1)                       # [rows, V]
        if sampling:
            processed = chain(logprobs, batch)
            is_sample = torch.tensor([u.s.sample for u in live for _ in range(u.W)])
            logprobs = torch.where(is_sample[:, None], processed, logprobs)
        offsets, o = [], 0
        for u in live:
            offsets.append(o)
            o += u.W
        # Groups run in order within a step (diversity needs the earlier groups' choices).
        chosen: dict[int, Tensor] = {}                 # request -> tokens chosen at this step
        by_group: dict[int, list[int]] = {}
        for i, u in enumerate(live):
            by_group.setdefault(u.group, []).append(i)
        for g in sorted(by_group):
            members = by_group[g]
            plain: dict[int, list[int]] = {}           # width -> plain (vectorisable) units
            for i in members:
                u = live[i]
                lp = logprobs[offsets[i]:offsets[i] + u.W]
                if u.s.groups > 1 and u.s.diversity_penalty > 0 and u.req in chosen:
                    counts = torch.bincount(chosen[u.req], minlength=V)[:V].to(lp.dtype)
                    lp = lp - u.s.diversity_penalty * counts    # stays in the running score (HF)
                    logprobs[offsets[i]:offsets[i] + u.W] = lp       # (the vectorised step reads it)
                if _banked(u.s):
                    tot = lp + u.running[:, None]
                    res = _constrained_candidates(tot, u.seqs, u.running, max(2, 1 + n_eos) * u.W,
                                                  u.s.constraints, eos)
                    _finish_step(u, res, step, eos, max_tokens_r[u.req], chosen)
                elif u.s.sample:
                    res = beam_step(lp[None], u.running[None], max(2, 1 + n_eos) * u.W,
                                    sample=True, generator=u.gen)
                    _finish_step(u, tuple(x[0] for x in res), step, eos, max_tokens_r[u.req], chosen)
                else:
                    plain.setdefault(u.W, []).append(i)
            for W, group in plain.items():  # one vectorised step for all plain units of width W
                lp = torch.stack([logprobs[offsets[i]:offsets[i] + W] for i in group])   # [N, W, V]
                run = torch.stack([live[i].running for i in group])                     # [N, W]
                sc, tk, pa = beam_step(lp, run, max(2, 1 + n_eos) * W)
                for j, i in enumerate(group):
                    _finish_step(live[i], (sc[j], tk[j], pa[j]), step, eos, max_tokens_r[live[i].req],
                                 chosen)
        # One index moves every per-row state: runtime cache, batch, chain.
        nxt = [i for i, u in enumerate(live) if not u.done]
        if not nxt:
            break
        index = torch.cat([live[i].parents + offsets[i] for i in nxt])
        tokens = torch.cat([live[i].tokens for i in nxt])
        runtime.select(index)
        if sampling:
            batch = batch.select(index).append(tokens)
            chain = chain.select(index)
        live = [live[i] for i in nxt]
        logits = runtime.decode(tokens)

    out: list[list[Hypothesis]] = []
    for r, s in enumerate(settings):
        hyps = [(h, u.group) for u in units if u.req == r for h in (u.pool or u.fallback)]
        hyps.sort(key=lambda x: -x[0][0])
        res = []
        for (score, toks, reason), g in hyps[:s.num_return_sequences]:
            text = tokenizer.decode(toks) if tokenizer is not None else ""
            res.append(Hypothesis(toks, score, reason, text, g))
        out.append(res)
    return out


def _finish_step(u: _Unit, res, step: int, eos: set[int], max_tokens: int, chosen: dict[int, Tensor]) -> None:
    scores, tokens, parents = res
    u.update(scores, tokens, parents, step, step >= max_tokens, eos, max_tokens)
    prev = chosen.get(u.req)
    chosen[u.req] = u.tokens if prev is None else torch.cat([prev, u.tokens])


# -- contrastive search ---------------------------------------------------------------------------

@torch.no_grad()
def _prompt_hidden(runtime: Any, ids: list[list[int]]) -> tuple[Tensor, Tensor]:
    """Last-layer hidden states of every prompt position, left-padded: ([B, T, H], mask [B, T])."""
    model = runtime.model
    T, B = max(len(p) for p in ids), len(ids)
    x = torch.full((B, T), getattr(runtime, "pad_token_id", 0), dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    for i, p in enumerate(ids):
        x[i, T - len(p):] = torch.tensor(p)
        mask[i, T - len(p):] = 1
    dev = getattr(runtime, "device", "cpu")
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=x.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev),
                output_hidden_states=True, use_cache=False)
    return out.hidden_states[-1].float(), mask.bool().to(dev)


def contrastive_search(runtime: Any, prompts: Sequence[str | Sequence[int]], *, alpha: float = 0.6,
                       top_k: int = 4, max_tokens: int = 64, chat: bool = False,
                       tokenizer: Any = None) -> list[Hypothesis]:
    """Contrastive search (HF `penalty_alpha`, `top_k`) with an `HFRuntime`; one hypothesis per prompt.

    The context hidden states are every prompt position (one extra forward over the prompts) plus
    each chosen token's; cosine similarities are taken with an epsilon guard. `alpha = 0` is greedy.
    """
    from .generate import encode_prompts

    if not 0 <= alpha <= 1:
        raise TemperanceError(f"contrastive alpha must be in [0, 1], got {alpha!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise TemperanceError(f"contrastive top_k must be an integer >= 1, got {top_k!r}")
    if not hasattr(runtime, "keep_hidden") or not hasattr(runtime, "model"):
        raise TemperanceError("contrastive search needs a runtime with hidden states (HFRuntime)")
    tokenizer = tokenizer if tokenizer is not None else getattr(runtime, "tokenizer", None)
    if isinstance(prompts, str):
        prompts = [prompts]
    ids = encode_prompts(tokenizer, prompts, chat=chat, max_context=getattr(runtime, "max_context", None))
    eos = {int(t) for t in (getattr(runtime, "eos_token_ids", ()) or ())}
    old = runtime.keep_hidden
    runtime.keep_hidden = True
    try:
        ctx, ctx_mask = _prompt_hidden(runtime, ids)                          # [B, T, H], [B, T]
        ctx = torch.nn.functional.normalize(ctx, dim=-1, eps=1e-8)
        logits = runtime.prefill(ids)                                          # [B, V]
        B = len(ids)
        toks: list[list[int]] = [[] for _ in range(B)]
        reason: list[str] = ["length"] * B
        live = list(range(B))
        k = min(top_k, logits.shape[1])
        while live:
            probs = logits.float().softmax(-1)
            p, cand = probs.topk(k, dim=-1)                                    # [b, k]
            b = len(live)
            # Run all k candidates of every row one step: their hidden states (and caches).
            runtime.select(torch.arange(b).repeat_interleave(k))
            cand_logits = runtime.decode(cand.reshape(-1))                     # [b*k, V]
            h = torch.nn.functional.normalize(runtime.last_hidden.view(b, k, -1), dim=-1, eps=1e-8)
            cos = torch.einsum("bkh,bth->bkt", h, ctx)                          # [b, k, T]
            penalty = cos.masked_fill(~ctx_mask[:, None, :], -1.0).amax(-1)    # [b, k]
            score = (1 - alpha) * p - alpha * penalty
            j = score.argmax(-1)                                               # [b] first max
            chosen = cand.gather(1, j[:, None]).view(-1)
            keep = []
            for i, r in enumerate(live):
                t = int(chosen[i])
                toks[r].append(t)
                if t in eos:
                    reason[r] = "stop"
                elif len(toks[r]) < max_tokens:
                    keep.append(i)
            if not keep:
                break
            kt = torch.tensor(keep)
            rows = kt * k + j[kt]
            runtime.select(rows)                                               # keep the chosen cache row
            logits = cand_logits[rows]
            hj = h[kt, j[kt]]                                                  # [b', H]
            ctx = torch.cat([ctx[kt], hj[:, None, :]], dim=1)
            ctx_mask = torch.cat([ctx_mask[kt], ctx_mask.new_ones(len(keep), 1)], dim=1)
            live = [live[i] for i in keep]
    finally:
        runtime.keep_hidden = old
    return [Hypothesis(t, 0.0, reason[r], tokenizer.decode(t) if tokenizer is not None else "")
            for r, t in enumerate(toks)]


# -- command line ---------------------------------------------------------------------------------

def _early(text: str) -> bool | str:
    v = text.strip().lower()
    if v in ("true", "false", "never"):
        return {"true": True, "false": False}.get(v, "never")
    raise argparse.ArgumentTypeError("expected true, false or never")


def add_search_flags(parser: argparse.ArgumentParser) -> None:
    """Add the search flags (beam family, contrastive) to `temperance generate`'s parser."""
    g = parser.add_argument_group("search (beam search, contrastive search)")
    g.add_argument("--beams", type=int, default=None, metavar="N", help="beam search with N beams")
    g.add_argument("--length-penalty", type=float, default=1.0,
                   help="finished score = logprob sum / length**P (default 1.0; > 0 favours longer)")
    g.add_argument("--early-stopping", type=_early, default=False, metavar="{true,false,never}",
                   help="beam stopping rule, as transformers (default false)")
    g.add_argument("--num-return-sequences", type=int, default=1, help="hypotheses per prompt (<= beams)")
    g.add_argument("--beam-sample", action="store_true",
                   help="beam sampling: run the sampler chain and draw the beams (HF do_sample)")
    g.add_argument("--diverse-groups", type=int, default=1, metavar="G", help="diverse beam search groups")
    g.add_argument("--diversity-penalty", type=float, default=0.0, help="Hamming diversity penalty")
    g.add_argument("--force-words", action="append", default=None, metavar="WORD",
                   help="a word that must appear (repeatable); 'a|b|c' = any one of them")
    g.add_argument("--contrastive", type=float, default=None, metavar="ALPHA",
                   help="contrastive search with penalty ALPHA (candidates: --top-k, default 4)")


def search_requested(args: argparse.Namespace) -> bool:
    """Did the user ask for a search strategy (so `run_search_from_args` should run)?"""
    return getattr(args, "beams", None) is not None or getattr(args, "contrastive", None) is not None


def _constraints(words: Sequence[str] | None, tokenizer: Any) -> tuple:
    if not words:
        return ()
    if tokenizer is None:
        raise TemperanceError("--force-words needs a tokenizer")
    out = []
    for w in words:
        alts = tuple(tuple(tokenizer.encode(a, add_special_tokens=False)) for a in w.split("|") if a)
        if not alts or any(not a for a in alts):
            raise TemperanceError(f"--force-words {w!r}: empty word")
        out.append(alts)
    return tuple(out)


def run_search_from_args(args: argparse.Namespace, runtime: Any, prompts: Sequence[str],
                         params: SamplingParams) -> list[list[str]]:
    """Run the search the flags ask for; return `[prompt] -> texts` (num_return_sequences each)."""
    max_tokens = getattr(args, "max_tokens", 64)
    chat = getattr(args, "chat", False)
    if getattr(args, "contrastive", None) is not None:
        if getattr(args, "beams", None) is not None:
            raise TemperanceError("give --beams or --contrastive, not both")
        k = getattr(args, "top_k", None) or params.top_k or 4
        return [[h.text] for h in contrastive_search(runtime, prompts, alpha=args.contrastive,
                                                      top_k=int(k), max_tokens=max_tokens, chat=chat)]
    tokenizer = getattr(runtime, "tokenizer", None)
    words = getattr(args, "force_words", None)
    settings = BeamSettings(
        beams=args.beams, length_penalty=args.length_penalty, early_stopping=args.early_stopping,
        num_return_sequences=args.num_return_sequences, groups=args.diverse_groups,
        diversity_penalty=args.diversity_penalty, constraints=_constraints(words, tokenizer),
        sample=bool(getattr(args, "beam_sample", False)))
    res = beam_search(runtime, prompts, settings, params, max_tokens=max_tokens, chat=chat)
    return [[h.text for h in hyps] for hyps in res]

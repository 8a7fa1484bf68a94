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

Both run as strategies of the `engine.Engine`: a step returns tokens plus the parent row each
continues, and the engine moves every per-row state (runtime cache, `Batch`, row objects with their
detokenizer, stop matcher and grammar matcher) with that one index. So beams honour stop strings
(a beam whose text completes one ends there, like EOS), `min_tokens` (EOS masked on the
log-probabilities, as transformers), grammar constraints (each beam its own matcher, forked when a
beam branches) and go through the engine's event stream. A "unit" is one beam search of width `W`
over `W` contiguous rows: one per request, or one per (request, group) for diverse beam search.

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
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from .chain import Chain
from .errors import TemperanceError
from .params import ACTIVE, SamplingParams

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
    """One beam search of width W over W contiguous rows of the batch (its own finished pool)."""

    def __init__(self, group: int, width: int, s: BeamSettings, device: torch.device):
        self.group, self.W, self.s = group, width, s
        self.running = torch.full((width,), NEG, device=device)
        self.running[0] = 0.0
        self.seqs: list[list[int]] = [[] for _ in range(width)]
        self.lps: list[list[float]] = [[] for _ in range(width)]   # each token's log-prob
        self.pool: list[tuple] = []          # finished: (score, tokens, reason, logprobs)
        self.fallback: list[tuple] = []      # length-ended, constraints unmet
        self.improvable = True               # HF's early-stop heuristic flag
        self.done = False
        self.tokens = torch.zeros(width, dtype=torch.int64, device=device)   # tokens to decode next
        self.parents = torch.arange(width, device=device)

    def update(self, scores: Tensor, tokens: Tensor, parents: Tensor, gen_len: int, at_max: bool,
               eos: set[int], max_tokens: int, ended: Callable[[int, int], bool] | None = None) -> None:
        """Split K ordered continuations into finished ones (pool) and the next W running beams.

        ``ended(parent, token)``: does that continuation complete a stop string?"""
        s, W = self.s, self.W
        lp = s.length_penalty
        tok, par = tokens.tolist(), parents.tolist()
        before = self.running.tolist()
        stop = [ended is not None and t not in eos and ended(p, t) for p, t in zip(par, tok)]
        ends = torch.tensor([at_max or t in eos or st for t, st in zip(tok, stop)], device=scores.device)
        step_lp = [float(v) - before[p] for v, p in zip(scores.tolist(), par)]
        # Only the first W continuations may finish (the rest are spares, so that W keep running).
        full = len(self.pool) >= W
        if self.improvable and not (full and s.early_stopping is True):
            for i in range(min(W, len(tok))):
                if not bool(ends[i]):
                    continue
                seq = self.seqs[par[i]] + [tok[i]]
                lps = self.lps[par[i]] + [step_lp[i]]
                reason = "stop" if tok[i] in eos or stop[i] else "length"
                score = float(scores[i]) / gen_len ** lp
                if s.constraints and not _constraint_state(seq, s.constraints)[0]:
                    self.fallback.append((score, seq, reason, lps))
                    continue
                self.pool.append((score, seq, reason, lps))
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
        kl = keep.tolist()
        self.seqs = [self.seqs[par[i]] + [tok[i]] for i in kl]
        self.lps = [self.lps[par[i]] + [step_lp[i]] for i in kl]
        # HF's heuristic: can the best running beam still beat the worst finished one?
        L = max_tokens if (s.early_stopping == "never" and lp > 0) else gen_len
        worst = min(h[0] for h in self.pool) if len(self.pool) >= W else NEG
        self.improvable = self.improvable and float(self.running.max()) / L ** lp > worst
        self.done = (not self.improvable or (len(self.pool) >= W and s.early_stopping is True)
                     or bool(ends.all()))


@dataclass(frozen=True)
class Contrastive:
    """Contrastive search settings: score ``(1 − alpha) p(v) − alpha · max cos(h_v, context)``
    over the ``top_k`` most likely tokens (HF ``penalty_alpha``, ``top_k``). ``alpha = 0`` is greedy."""

    alpha: float = 0.6
    top_k: int = 4

    def check(self) -> None:
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0 <= self.alpha <= 1:
            raise TemperanceError(f"contrastive alpha must be in [0, 1], got {self.alpha!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1:
            raise TemperanceError(f"contrastive top_k must be an integer >= 1, got {self.top_k!r}")


# -- the strategies as the engine sees them -------------------------------------------------------

class BeamSearch:
    """One beam request's state: its units (one per diverse group), the step count, the result."""

    def __init__(self, req: Any, device: torch.device):
        s: BeamSettings = req.strategy
        self.req, self.s, self.step = req, s, 0
        self.units = [_Unit(g, s.beams // s.groups, s, device) for g in range(s.groups)]
        self.gen: torch.Generator | None = None
        if s.sample:
            self.gen = torch.Generator(device=device).manual_seed(req.params.seed)
        self.result: list[Hypothesis] = []

    def hypotheses(self, tokenizer: Any, eos: frozenset) -> tuple[list[Hypothesis], list]:
        """The best ``num_return_sequences`` of every group's pool, and their events."""
        from .engine import Event, Row
        hyps = sorted(((h, u.group) for u in self.units for h in (u.pool or u.fallback)),
                      key=lambda x: -x[0][0])[:self.s.num_return_sequences]
        out, events = [], []
        for rank, ((score, toks, reason, lps), g) in enumerate(hyps):
            row = Row(self.req, rank, tokenizer, frozenset(eos), len(toks), None)
            mine = [e for t, lp in zip(toks, lps)
                    for e in row.push(t, Event(self.req.id, rank, t, "", lp, None, None, None))]
            mine[-1] = dataclasses.replace(mine[-1], finish_reason=reason)
            text = "".join(e.text for e in mine)
            events += mine
            out.append(Hypothesis(toks, score, reason, text, g))
        return out, events


class ContrastiveSearch:
    """One contrastive request's state: the normalised context hidden states and the candidates."""

    def __init__(self, req: Any, engine: Any):
        h, mask = engine.runtime.context_hidden([req.prompt])                  # [1, T, H], [1, T]
        self.ctx = torch.nn.functional.normalize(h, dim=-1, eps=1e-8)
        self.mask = mask
        self.s: Contrastive = req.strategy
        self.p: Tensor | None = None       # [k] probabilities of the candidates in the rows
        self.cand: Tensor | None = None    # [k] the candidate tokens fed to the rows


def width(strategy: Any) -> int:
    """Rows a request starts with: its beams (contrastive: one, forked into top_k at step 1)."""
    return strategy.beams if isinstance(strategy, BeamSettings) else 1


def check_strategy(req: Any) -> None:
    """Validate a request's strategy and refuse the options it cannot honour (naming both)."""
    st = req.strategy
    if not isinstance(st, (BeamSettings, Contrastive)):
        raise TemperanceError(f"strategy must be None, a BeamSettings or a Contrastive, got {st!r}")
    st.check()
    name = "beam search" if isinstance(st, BeamSettings) else "contrastive search"
    if req.n != 1:
        raise TemperanceError(f"n={req.n} with {name}: use num_return_sequences for beams "
                              "(contrastive search is deterministic)")
    if req.ban_phrases is not None:
        raise TemperanceError(f"ban_phrases with {name}: a rewind cannot follow reordered beams; "
                              "use one of them")
    active = sorted(n for n, f in ACTIVE.items() if f(req.params))
    if active and not (isinstance(st, BeamSettings) and st.sample):
        raise TemperanceError(f"{name} does not run the sampler chain, but {', '.join(active)} "
                              "is set; unset it (or use beam sampling)")
    if isinstance(st, Contrastive) and req.constraint is not None:
        raise TemperanceError("a constraint with contrastive search: the candidates are scored "
                              "before the grammar could mask them; use one of them")
    if isinstance(st, BeamSettings) and st.sample and req.params.mirostat:
        raise TemperanceError("mirostat with beam sampling: mirostat's state follows one row, not "
                              "a pool of beams; use one of them")


def start(req: Any, engine: Any, device: torch.device) -> Any:
    """A request's strategy state, made when it joins the batch."""
    if isinstance(req.strategy, BeamSettings):
        return BeamSearch(req, device)
    return ContrastiveSearch(req, engine)


@dataclass
class Decision:
    """The next batch: ``index`` [B'] (the row each new row continues), ``tokens`` [B'] to feed;
    ``emit`` {new position: (token, event)} rows that push an event, ``silent`` positions that
    accept their token without one (beams), ``after`` events already made (finished searches)."""

    index: Tensor
    tokens: Tensor
    rows: list = field(default_factory=list)   # ``index`` as a list
    emit: dict = field(default_factory=dict)
    silent: set = field(default_factory=set)
    after: list = field(default_factory=list)


def decide(engine: Any, x: Tensor) -> Decision:
    """One step of every strategy over the batch: sampling rows through the chain and pick, beam
    requests through `beam_step`, contrastive requests on the runtime's hidden states."""
    rows, dev = engine.rows, x.device
    blocks: list[tuple[Any, int, int]] = []           # (request, first row, end) in batch order
    for j, r in enumerate(rows):
        if blocks and blocks[-1][0] is r.req:
            blocks[-1] = (r.req, blocks[-1][1], j + 1)
        else:
            blocks.append((r.req, j, j + 1))
    sampling = [j for j, r in enumerate(rows) if r.req.strategy is None]
    picked: dict[int, tuple[int, Any]] = {}
    if sampling:
        tokens, events = engine.sample(x, sampling)
        picked = {j: (t, e) for j, t, e in zip(sampling, tokens.tolist(), events)}
    beam_blocks = [(q, a, b) for q, a, b in blocks if isinstance(q.strategy, BeamSettings)]
    if beam_blocks:
        _beam_step(engine, x, beam_blocks)
    index: list[int] = []
    toks: list[int] = []
    d = Decision(torch.empty(0), torch.empty(0))
    for req, a, b in blocks:
        if req.strategy is None:
            for j in range(a, b):
                d.emit[len(index)] = picked[j]
                index.append(j)
                toks.append(picked[j][0])
        elif isinstance(req.strategy, BeamSettings):
            bs = req.search
            if all(u.done for u in bs.units):
                bs.result, evs = bs.hypotheses(engine.tokenizer, engine.eos)
                d.after += evs
                req.done = True
                continue
            off = a
            for u in bs.units:
                if u.done:
                    continue
                for p, t in zip((u.parents + off).tolist(), u.tokens.tolist()):
                    d.silent.add(len(index))
                    index.append(p)
                    toks.append(t)
                off += u.W
        else:
            for p, t in _contrastive_step(engine, x, req, a, b, d):
                index.append(p)
                toks.append(t)
    d.rows = index
    d.index = torch.tensor(index, dtype=torch.int64, device=dev)
    d.tokens = torch.tensor(toks, dtype=torch.int64, device=dev)
    return d


def _beam_step(engine: Any, x: Tensor, blocks: list) -> None:
    """Every live unit of every beam request one step on (units of equal width vectorised)."""
    eos = set(engine.eos)
    n_eos = len(eos)
    live: list[tuple[Any, _Unit, int]] = []          # (request, unit, first row)
    for req, a, _ in blocks:
        bs = req.search
        bs.step += 1
        off = a
        for u in bs.units:
            if not u.done:
                live.append((req, u, off))
                off += u.W
    for req, a, b in blocks:  # beam sampling: the request's chain on its log-probs
        if req.strategy.sample:
            idx = torch.arange(a, b, device=x.device)
            chain = engine._chains.setdefault(req.params.chain, Chain(list(req.params.chain)))
            x[idx] = chain(x[idx], engine.batch.select(idx))
    chosen: dict[int, Tensor] = {}                   # request id -> tokens chosen at this step
    for g in sorted({u.group for _, u, _ in live}):
        plain: dict[int, list[tuple[Any, _Unit, int]]] = {}
        for req, u, off in [t for t in live if t[1].group == g]:
            lp = x[off:off + u.W]
            if u.s.groups > 1 and u.s.diversity_penalty > 0 and req.id in chosen:
                counts = torch.bincount(chosen[req.id], minlength=x.shape[1])[:x.shape[1]].to(lp.dtype)
                lp = lp - u.s.diversity_penalty * counts       # stays in the running score (HF)
                x[off:off + u.W] = lp                          # (the vectorised step reads it)
            k = max(2, 1 + n_eos) * u.W
            if _banked(u.s):
                res = _constrained_candidates(lp + u.running[:, None], u.seqs, u.running, k,
                                              u.s.constraints, eos)
                _finish(engine, req, u, off, res, chosen)
            elif u.s.sample:
                res = beam_step(lp[None], u.running[None], k, sample=True, generator=req.search.gen)
                _finish(engine, req, u, off, tuple(r[0] for r in res), chosen)
            else:
                plain.setdefault(u.W, []).append((req, u, off))
        for W, group in plain.items():  # one vectorised step for all plain units of width W
            lp = torch.stack([x[off:off + W] for _, _, off in group])           # [N, W, V]
            run = torch.stack([u.running for _, u, _ in group])                  # [N, W]
            sc, tk, pa = beam_step(lp, run, max(2, 1 + n_eos) * W)
            for j, (req, u, off) in enumerate(group):
                _finish(engine, req, u, off, (sc[j], tk[j], pa[j]), chosen)


def _finish(engine: Any, req: Any, u: _Unit, off: int, res, chosen: dict) -> None:
    scores, tokens, parents = res
    step, rows = req.search.step, engine.rows
    limit = rows[off].limit
    ended = None
    if req.stop:
        def ended(p: int, t: int) -> bool:
            r = rows[off + p]
            delta = r.detok.copy().push(t) if r.detok is not None else ""
            return r.stops.copy().push(delta)[1]
    dev = u.running.device  # (the banked step builds its candidates on the host)
    u.update(scores.to(dev), tokens.to(dev), parents.to(dev), step, step >= limit, set(engine.eos), limit,
             ended)
    prev = chosen.get(req.id)
    chosen[req.id] = u.tokens if prev is None else torch.cat([prev, u.tokens])


def _contrastive_step(engine: Any, x: Tensor, req: Any, a: int, b: int, d: Decision) -> list:
    """One contrastive step: choose among the candidates in rows a..b, then fork the chosen row
    into the next top_k candidates. Returns (parent row, token) pairs."""
    cs, k = req.search, min(req.strategy.top_k, x.shape[1])
    alpha = req.strategy.alpha
    if cs.cand is None:                              # the prompt's row: no candidate yet
        j, row = a, engine.rows[a]
        logits = x[a]
    else:
        h = torch.nn.functional.normalize(engine.runtime.hidden()[a:b], dim=-1, eps=1e-8)   # [k, H]
        cos = torch.einsum("kh,th->kt", h, cs.ctx[0])                        # [k, T]
        penalty = cos.masked_fill(~cs.mask[0][None, :], -1.0).amax(-1)      # [k]
        score = (1 - alpha) * cs.p - alpha * penalty
        i = int(score.argmax())                                              # first max
        j, row = a + i, engine.rows[a + i]
        tok = int(cs.cand[i])
        from .engine import Event
        lp = float(torch.log(cs.p[i]))
        d.after += row.push(tok, Event(req.id, 0, tok, "", lp, None, None, None))
        cs.ctx = torch.cat([cs.ctx, h[i][None, None, :]], dim=1)
        cs.mask = torch.cat([cs.mask, cs.mask.new_ones(1, 1)], dim=1)
        if row.finished:
            req.done = True
            return [(j, tok)]
        logits = engine.logits[j].clone()
        if row.count < req.min_tokens:
            for t in engine.eos:
                if t < logits.shape[0]:
                    logits[t] = float("-inf")
    cs.p, cs.cand = logits.float().softmax(-1).topk(k)
    return [(j, t) for t in cs.cand.tolist()]


# -- drivers ---------------------------------------------------------------------------------------

def _prompts_ids(runtime: Any, prompts, chat: bool, tokenizer: Any) -> list[list[int]]:
    from .generate import encode_prompts
    if isinstance(prompts, str):
        prompts = [prompts]
    if not prompts:
        raise TemperanceError("search needs at least one prompt")
    return encode_prompts(tokenizer, prompts, chat=chat, max_context=getattr(runtime, "max_context", None))


def beam_search(runtime: Any, prompts: Sequence[str | Sequence[int]],
                settings: BeamSettings | Sequence[BeamSettings] = BeamSettings(),
                params: SamplingParams | Sequence[SamplingParams] = SamplingParams(), *,
                max_tokens: int = 64, min_tokens: int = 0, stop: Sequence[str] = (),
                constraint: Any = None, chat: bool = False,
                tokenizer: Any = None) -> list[list[Hypothesis]]:
    """Beam search every prompt; return `[request] -> num_return_sequences` best `Hypothesis`es.

    Runs on the `Engine` (streaming: `Engine.add(Request(..., strategy=settings))`).

    Args:
        runtime: a `Runtime` (`prefill`, `decode`, `select`, `eos_token_ids`).
        prompts: strings (need a tokenizer) or token-id lists.
        settings: one `BeamSettings` for all prompts or one per prompt.
        params: the chain's settings (used only by beam sampling, `settings.sample`); one or per
            prompt; a request's `seed` seeds its draws.
        max_tokens: most new tokens per hypothesis (HF `max_new_tokens`).
        min_tokens: EOS is banned before this many tokens (HF `min_new_tokens`).
        stop: stop strings: a beam whose text completes one ends there (finish "stop"; the text
            is cut before it).
        constraint: a `constrain.Constraint` every beam follows (EOS only where it accepts).
    """
    from .engine import Engine, Request

    tokenizer = tokenizer if tokenizer is not None else getattr(runtime, "tokenizer", None)
    ids = _prompts_ids(runtime, prompts, chat, tokenizer)
    R = len(ids)
    settings = [settings] * R if isinstance(settings, BeamSettings) else list(settings)
    params = [params] * R if isinstance(params, SamplingParams) else list(params)
    if len(settings) != R or len(params) != R:
        raise TemperanceError("give one BeamSettings / SamplingParams for all prompts or one per prompt")
    engine = Engine(runtime, tokenizer)
    reqs = []
    for p, s, prm in zip(ids, settings, params):
        if not isinstance(s, BeamSettings):
            raise TemperanceError(f"settings must be BeamSettings, got {s!r}")
        if prm.seed is None:
            prm = dataclasses.replace(prm, seed=int(torch.randint(0, 2**62, ())))
        reqs.append(Request(p, prm, max_tokens=max_tokens, min_tokens=min_tokens, stop=tuple(stop),
                            constraint=constraint, strategy=s))
        engine.add(reqs[-1])
    while engine.has_work():
        engine.step()
    return [r.search.result for r in reqs]


def contrastive_search(runtime: Any, prompts: Sequence[str | Sequence[int]], *, alpha: float = 0.6,
                       top_k: int = 4, max_tokens: int = 64, min_tokens: int = 0,
                       stop: Sequence[str] = (), chat: bool = False,
                       tokenizer: Any = None) -> list[Hypothesis]:
    """Contrastive search (HF `penalty_alpha`, `top_k`); one hypothesis per prompt.

    The context hidden states are every prompt position (`runtime.context_hidden`) plus each
    chosen token's (`runtime.hidden()` after the candidates are fed); cosine similarities take an
    epsilon guard. `alpha = 0` is greedy. Runs on the `Engine`.
    """
    from .engine import Engine, Request

    settings = Contrastive(alpha, top_k)
    settings.check()
    if not hasattr(runtime, "context_hidden") or not hasattr(runtime, "hidden"):
        raise TemperanceError("contrastive search needs a runtime with hidden states (HFRuntime)")
    tokenizer = tokenizer if tokenizer is not None else getattr(runtime, "tokenizer", None)
    ids = _prompts_ids(runtime, prompts, chat, tokenizer)
    old = runtime.keep_hidden
    runtime.keep_hidden = True
    try:
        engine = Engine(runtime, tokenizer)
        out: dict[int, list] = {}
        reqs = [Request(p, SamplingParams(seed=0), max_tokens=max_tokens, min_tokens=min_tokens,
                        stop=tuple(stop), strategy=settings) for p in ids]
        for r in reqs:
            out[engine.add(r)] = []
        while engine.has_work():
            for e in engine.step():
                out[e.request].append(e)
    finally:
        runtime.keep_hidden = old
    res = []
    for r in reqs:
        evs = out[r.id]
        res.append(Hypothesis([e.token for e in evs], 0.0, evs[-1].finish_reason if evs else "length",
                              "".join(e.text for e in evs)))
    return res


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
                         params: SamplingParams) -> list[list[Hypothesis]]:
    """Run the search the flags ask for; return `[prompt] -> hypotheses` (num_return_sequences
    each; `.text`, `.tokens`, `.finish_reason`).

    `--stop`, `--min-tokens` and the constraint flags (`--json-schema`, `--regex`, `--grammar`,
    `--choices`) apply to beams; `-n > 1` and `--ban-phrases` are errors naming both options."""
    from .mbr import strategy_kwargs

    max_tokens = getattr(args, "max_tokens", 64)
    chat = getattr(args, "chat", False)
    stop = tuple(getattr(args, "stop", None) or ())
    min_tokens = getattr(args, "min_tokens", 0) or 0
    name = "--contrastive" if getattr(args, "contrastive", None) is not None else "--beams"
    if (getattr(args, "n", 1) or 1) > 1:
        raise TemperanceError(f"-n {args.n} with {name}: use --num-return-sequences for beams "
                              "(contrastive search is deterministic)")
    kw = strategy_kwargs(args) if hasattr(args, "json_schema") else {}
    if "ban_phrases" in kw:
        raise TemperanceError(f"--ban-phrases with {name}: a rewind cannot follow reordered beams; "
                              "give one of them")
    if getattr(args, "contrastive", None) is not None:
        if getattr(args, "beams", None) is not None:
            raise TemperanceError("give --beams or --contrastive, not both")
        if "constraint" in kw:
            raise TemperanceError("a constraint flag with --contrastive: give one of them")
        extra = sorted(n for n, f in ACTIVE.items() if f(params) and n != "top_k")
        if extra:
            raise TemperanceError(f"--contrastive does not run the sampler chain, but {', '.join(extra)} "
                                  "is set; only --top-k (its candidates) applies")
        k = getattr(args, "top_k", None) or params.top_k or 4
        return [[h] for h in contrastive_search(runtime, prompts, alpha=args.contrastive,
                                                      top_k=int(k), max_tokens=max_tokens, chat=chat,
                                                      min_tokens=min_tokens, stop=stop)]
    tokenizer = getattr(runtime, "tokenizer", None)
    words = getattr(args, "force_words", None)
    settings = BeamSettings(
        beams=args.beams, length_penalty=args.length_penalty, early_stopping=args.early_stopping,
        num_return_sequences=args.num_return_sequences, groups=args.diverse_groups,
        diversity_penalty=args.diversity_penalty, constraints=_constraints(words, tokenizer),
        sample=bool(getattr(args, "beam_sample", False)))
    res = beam_search(runtime, prompts, settings, params, max_tokens=max_tokens, chat=chat,
                      min_tokens=min_tokens, stop=stop, constraint=kw.get("constraint"))
    return [list(hyps) for hyps in res]

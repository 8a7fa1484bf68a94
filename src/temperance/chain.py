"""Chain: the samplers of a request, applied in order to a batch whose rows carry their own knobs.

The order is data (a `SamplingParams`, a list of names, a ``"a,b,c"`` string or a preset) and the
chain prints itself::

    >>> print(Chain("penalties,top_k,top_p,min_p,temperature"))
    penalties → top_k → top_p → min_p → temperature

A sampler that no row uses is skipped without touching the tensor. The caller's logits are never
mutated: the chain copies them once (into a buffer it reuses) before the first sampler that edits
logits in place.

Two ways to run it, with the same result:

* ``chain(logits, batch)`` → processed dense logits ``[B, V]`` (``-inf`` = removed);
* ``chain.candidates(logits, batch)`` → the survivors as `Candidates` ``[B, K]``. Once a truncation
  sampler (top-k, top-p, min-p, top-nσ) has run, every later sampler only looks at the survivors,
  so the chain compacts there and never touches the other ~V entries again. This is the fast path.

``chain.sample(logits, batch, state=...)`` = candidates → `pick` → ``state.accept``. The chain
holds no per-row state: mirostat's ``mu`` lives in a `states.MirostatState` that the caller owns
and moves with the batch (``select`` / ``accept`` / ``rollback``); without one, mirostat starts
from ``mu = 2 · tau``. XTC needs no state: its coin is keyed by the row's (seed, step).

>>> import torch
>>> from temperance import Batch, SamplingParams
>>> chain = Chain()
>>> batch = Batch(SamplingParams(top_k=2, temperature=0), size=1)
>>> chain(torch.tensor([[1.0, 3.0, 2.0]]), batch)   # temperature 0: a point mass on the maximum
tensor([[-inf, 3., -inf]])

Your own stage is a function ``(logits, batch) -> logits`` placed anywhere in the order; it sees
the dense ``[B, V]`` logits (the chain compacts only after it), may edit them in place, and must
leave every row at least one finite logit:

>>> def ban_odd(logits, batch):
...     "remove every odd token id"
...     logits[:, 1::2] = float("-inf")
...     return logits
>>> chain = Chain(["top_k", ban_odd, "temperature"])
>>> print(chain)
top_k → ban_odd → temperature
>>> chain(torch.tensor([[1.0, 3.0, 2.0]]), Batch(SamplingParams(top_k=2), size=1))
tensor([[-inf, -inf, 2.]])
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from .batch import Batch
from .candidates import Candidates
from .errors import TemperanceError
from .ops import _native
from .ops._common import check_history, check_not_empty
from .ops._topk import chunked_topk
from .ops.logit_bias import _logit_bias_
from .ops.mirostat import _mirostat_
from .ops.penalties import penalized, window
from .ops.temperature import is_greedy
from .ops.top_k import _top_k_
from .params import STAGE, SamplingParams, parse_samplers
from .pick import Picked, check_rows, pick
from .stage import Stage, user_stage

SPARSE_EDITS = {"penalties", "logit_bias"}  # stages that touch only known tokens (see _sparse_top_k)


class Chain:
    def __init__(self, samplers: SamplingParams | str | Sequence[str | Callable] = "llama.cpp"):
        if isinstance(samplers, SamplingParams):
            self.stages_ = tuple(STAGE[n] for n in samplers.chain)
        else:
            self.stages_ = _parse_order([samplers] if isinstance(samplers, str) else list(samplers))
        self.names = tuple(s.name for s in self.stages_)
        self._state = None  # the MirostatState of the call in progress (None: mu = 2 tau)
        self._buf: Tensor | None = None

    @classmethod
    def for_batch(cls, batch: Batch) -> Chain:
        """The chain every row of ``batch`` asks for (rows with other orders: split the batch)."""
        orders = {p.chain for p in batch.params}
        if len(orders) > 1:
            raise TemperanceError("rows of one chain must share one sampler order; got "
                                  + " | ".join(" → ".join(o) for o in orders))
        return cls(list(orders.pop()))

    def __str__(self) -> str:
        return " → ".join(self.names)

    def __repr__(self) -> str:
        return f"Chain({str(self)!r})"

    # -- running ------------------------------------------------------------------------------
    def __call__(self, logits: Tensor, batch: Batch, state=None) -> Tensor:
        """Processed dense logits ``[B, V]``; the caller's tensor is left untouched."""
        self._state = state
        self._enter(logits, batch)
        x = logits.to(torch.float32, copy=True)  # returned to the caller: not the reused buffer
        for stage in self._active(batch):
            x = self._apply(stage, x, batch, logits.shape[1])
        return x

    def stages(self, logits: Tensor, batch: Batch, state=None) -> list[tuple[str, Tensor]]:
        """The dense logits after each active stage, in order (for inspection and teaching)."""
        self._state = state
        self._enter(logits, batch)
        x, out = logits.to(torch.float32, copy=True), []
        for stage in self._active(batch):
            x = self._apply(stage, x, batch, logits.shape[1])
            out.append((stage.name, x.clone()))
        return out

    def candidates(self, logits: Tensor, batch: Batch, state=None) -> Candidates:
        """The survivors of the chain as `Candidates` (same values as ``__call__``)."""
        self._state = state
        V = logits.shape[1]
        stages = self._active(batch)
        at = self._compaction_point(stages, batch, V)
        if at is not None and stages[at].name == "top_k" and {s.name for s in stages[:at]} <= SPARSE_EDITS:
            self._enter(logits, batch, values=False)  # rows are checked on the top-k's maximum
            c = self._sparse_top_k(logits, batch, [s.name for s in stages[:at]])
            if c is not None:
                for stage in stages[at + 1:]:
                    c.logits = self._apply(stage, c.logits, batch, V)
                return c
        self._enter(logits, batch)
        if at is None:  # no compaction: the result may be the whole row, so not the reused buffer
            x = logits.to(torch.float32, copy=True)
            for stage in stages:
                x = self._apply(stage, x, batch, V)
            return Candidates.from_dense(x)
        x = logits if at == 0 and logits.dtype == torch.float32 else self._copy(logits)
        for stage in stages[:at]:
            x = self._apply(stage, x, batch, V)
        c = stages[at].compact(x, batch)
        for stage in stages[at + 1:]:
            c.logits = self._apply(stage, c.logits, batch, V)
        return c

    def sample(self, logits: Tensor, batch: Batch, *, state=None, raw_logprobs: bool = False,
               top_n: int = 0) -> Picked:
        """candidates → pick → ``state.accept``: one token per row."""
        c = self.candidates(logits, batch, state)
        greedy = [p.greedy for p in batch.params]  # host-side: no device round trip
        greedy = greedy[0] if len(set(greedy)) == 1 else is_greedy(batch.knob("temperature"))
        picked = pick(c, seed=batch.seed, step=batch.step, greedy=greedy,
                      raw_logits=logits if raw_logprobs else None, top_n=top_n)
        if state is not None:
            state.accept(picked, batch)
        return picked

    # -- internals ------------------------------------------------------------------------------
    def _active(self, batch: Batch) -> list[Stage]:
        missing = sorted({STAGE[n].part_of or n for n in batch._active if batch.active(n)} - set(self.names))
        if missing:
            raise TemperanceError(f"the batch uses {', '.join(missing)} but this chain ({self}) has no "
                                  f"such stage; build the chain from the rows' params (Chain.for_batch)")
        return [s for s in self.stages_ if STAGE.get(s.name) is not s or batch.active(s.name)]

    @staticmethod
    def _enter(logits: Tensor, batch: Batch, values: bool = True) -> None:
        if not isinstance(logits, Tensor) or logits.dim() != 2 or not logits.is_floating_point():
            raise TemperanceError("logits must be a floating-point [B, V] tensor")
        if logits.shape[0] != len(batch):
            raise TemperanceError(f"logits have {logits.shape[0]} rows but the batch has {len(batch)}")
        check_history(batch.history, logits.shape[1])
        if values:
            check_rows(logits)

    def _sparse_top_k(self, logits: Tensor, batch: Batch, pre: list[str]) -> Candidates | None:
        """Penalties / logit bias followed by top-k, without copying the logits.

        Those stages change only a few known tokens per row (the history window, the biased ids).
        Apply them to just those tokens — their columns gathered into a small tensor, the history
        and bias ids remapped to its columns, the same kernels run on it — and take the raw top
        k + c, c the number of touched tokens among those: the top-k of the edited row lies in the
        union (an untouched token can be outranked only by touched ones). Returns None when a tie at the raw window's
        boundary could hide a token; the caller then takes the dense path.
        """
        B, V = logits.shape
        if pre == ["penalties"] and _native.usable(logits):  # the default chain: one native call
            k = batch.knob
            r = _native.penalized_topk(logits, batch.history, k("penalty_last_n"), k("repetition_penalty"),
                                       k("frequency_penalty"), k("presence_penalty"), k("top_k"),
                                       max(p.top_k for p in batch.params))
            if r == 2:  # a row's maximum is +inf or -inf: say which row, and why
                check_rows(logits)
            if not isinstance(r, int):
                return Candidates(*r[:2], V)
        parts = []
        if "penalties" in pre:
            parts.append(window(batch.history, batch.knob("penalty_last_n")))
        if "logit_bias" in pre:
            parts.append(batch.logit_bias(V)[0])
        touched = torch.cat(parts, dim=1) if parts else logits.new_empty((B, 0), dtype=torch.int64)
        # Distinct touched ids per row (ascending, padded with V), and each touched entry's column.
        srt, perm = torch.where(touched < 0, V, touched).sort(-1)
        new = torch.ones_like(srt, dtype=torch.bool)
        new[:, 1:] = srt[:, 1:] != srt[:, :-1]
        rank = new.cumsum(-1) - 1
        uniq = torch.full_like(srt, V).scatter_(1, rank, srt)
        column = torch.empty_like(rank).scatter_(1, perm, rank)  # touched[b, i] == uniq[b, column[b, i]]
        raw = logits.gather(1, uniq.clamp(max=V - 1)).float().masked_fill_(uniq == V, float("-inf"))
        edited = raw.clone()
        for name in pre:
            if name == "logit_bias":
                ids, vals = batch.logit_bias(V)
                _logit_bias_(edited, column[:, touched.shape[1] - ids.shape[1]:], vals)
            else:
                h = parts[0]  # the penalty window, already cut to the last n tokens
                counts = torch.zeros_like(edited).scatter_add_(
                    1, column[:, : h.shape[1]], (h >= 0).to(edited.dtype))
                _penalize_distinct(edited, counts, batch)
        k = batch.knob("top_k")
        bans = "logit_bias" in pre and batch.bias_bans
        kmax = max(p.top_k for p in batch.params)  # host-side
        r = _native.topk_override(logits, k, kmax, uniq, edited) if _native.usable(logits) else None
        if r is not None:  # one pass: the raw row with the edited tokens' new values
            vals, ids, rawmax = r
            check_rows(rawmax.view(-1, 1))
            if bans:
                check_not_empty(vals, "logit_bias banned every token")
            return Candidates(vals, ids, V)
        R = int(k.max()) + 9  # a little slack: a touched token or two may rank that high
        while True:  # widen until the raw window surely holds the k best untouched tokens
            rv, rid = chunked_topk(logits, min(R, V))
            c = int((raw >= rv[:, -1:]).sum(-1).max())
            if R >= V or int(k.max()) + 1 + c <= R:
                break
            R = int(k.max()) + 1 + c
        check_rows(rv[:, :1].float())
        again = (rid.unsqueeze(-1) == uniq.unsqueeze(1)).any(-1)  # raw copies of edited tokens
        ids = torch.cat([torch.where(again, V, rid), uniq], dim=1)
        vals = torch.cat([rv.float().masked_fill(again, float("-inf")), edited], dim=1)
        if bans:
            check_not_empty(vals, "logit_bias banned every token")
        ids, order = ids.sort(-1)  # token-id order, so ties break by lower id
        vals = _top_k_(vals.gather(1, order), k)
        kth = torch.where(torch.isfinite(vals), vals, torch.inf).amin(-1)
        if R < V and bool((kth <= rv[:, -1]).any()):
            return None
        return Candidates.where(vals, torch.isfinite(vals), ids, V)

    def _copy(self, logits: Tensor) -> Tensor:
        """One float32 copy of the caller's logits, into a buffer reused across steps."""
        buf = self._buf
        if buf is None or buf.shape != logits.shape or buf.device != logits.device:
            buf = self._buf = torch.empty(logits.shape, dtype=torch.float32, device=logits.device)
        return buf.copy_(logits)

    def _mu(self, batch: Batch) -> Tensor:
        s = self._state
        if s is None:
            return 2 * batch.knob("mirostat_tau")
        if len(s) != len(batch):
            raise TemperanceError(f"the mirostat state has {len(s)} rows but the batch has {len(batch)}")
        return s.mu

    @staticmethod
    def _compaction_point(stages: list[Stage], batch: Batch, V: int) -> int | None:
        """Where the chain may switch to compacted survivors: the first truncation stage with a
        ``compact`` that every row uses, when nothing after it needs the dense row."""
        for i, stage in enumerate(stages):
            if stage.name == "temperature" and not all(p.greedy for p in batch.params):
                continue  # temperature compacts only when every row is greedy (a point mass)
            if stage.compact is not None and batch.all_active(stage.name):
                if any(s.reads_ids or s.row_length for s in stages[i + 1:]):
                    return None
                if stage.name == "top_k" and max(p.top_k for p in batch.params) >= V:  # host-side
                    return None
                return i
        return None  # (stages before the compaction point run densely, as in __call__)

    def _apply(self, stage: Stage, x: Tensor, batch: Batch, V: int) -> Tensor:
        if stage.name == "mirostat":  # stateful: runs with this chain's per-row mu
            return _mirostat_(x, self._mu(batch), batch.knob("mirostat"), V)
        if STAGE.get(stage.name) is stage:
            return stage.apply(x, batch)
        y = stage.apply(x, batch)  # a user's stage: check what it returns
        if not isinstance(y, Tensor) or y.shape != x.shape or not y.is_floating_point():
            raise TemperanceError(f"stage {stage.name!r} must return a floating-point tensor of shape "
                                  f"{tuple(x.shape)}, got {getattr(y, 'shape', type(y).__name__)}")
        check_not_empty(y, f"stage {stage.name!r} removed every token")
        return y.to(x.dtype)


def _penalize_distinct(x: Tensor, counts: Tensor, batch: Batch) -> Tensor:
    """`ops.penalties` on distinct tokens: ``x`` ``[B, T]`` their logits, ``counts`` how often each
    occurs in the penalty window (0: not in it, left alone), in place."""
    k = batch.knob
    new = penalized(x, counts, k("repetition_penalty"), k("frequency_penalty"), k("presence_penalty"),
                    k("penalty_last_n"))
    return x.copy_(torch.where(counts == 0, x, new))


def _parse_order(items: list) -> tuple[Stage, ...]:
    """Names (or one preset / ``"a,b,c"`` string), `Stage` objects and plain callables → stages.

    Mirostat may be named anywhere; it runs last, replacing truncation and the draw."""
    out, names = [], []
    for item in items:
        if isinstance(item, Stage) or callable(item):
            if names:
                out.extend(STAGE[n] for n in parse_samplers(names[0] if len(names) == 1 else names))
                names = []
            out.append(item if isinstance(item, Stage) else user_stage(item))
        else:
            names.append(item)
    miro = [n for n in names if str(n).strip().lower() == "mirostat"]
    names = [n for n in names if str(n).strip().lower() != "mirostat"]
    if names:
        out.extend(STAGE[n] for n in parse_samplers(names[0] if len(names) == 1 else names))
    seen = [s.name for s in out]
    dup = {n for n in seen if seen.count(n) > 1}
    if dup:
        raise TemperanceError(f"sampler {sorted(dup)[0]!r} appears twice in the chain")
    return tuple(out) + ((STAGE["mirostat"],) if miro else ())

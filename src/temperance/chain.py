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

``chain.sample(logits, batch)`` = candidates → `pick` → ``accept``. Stateful samplers keep per-row
state here: mirostat's ``mu`` (updated by ``accept`` from the chosen token's surprise) follows the
batch through ``select(index)``. XTC needs no state: its coin is keyed by the row's (seed, step).

>>> import torch
>>> from temperance import Batch, SamplingParams
>>> chain = Chain()
>>> batch = Batch(SamplingParams(top_k=2, temperature=0), size=1)
>>> chain(torch.tensor([[1.0, 3.0, 2.0]]), batch)
tensor([[-inf, 3., 2.]])
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .batch import Batch
from .candidates import Candidates
from .errors import TemperanceError
from .ops._topk import chunked_topk
from .ops.dry import _dry_
from .ops.dynatemp import _dynatemp_
from .ops.epsilon import _epsilon_
from .ops.eta import _eta_
from .ops.logit_bias import _logit_bias_
from .ops.min_p import _min_p_
from .ops.min_p import threshold as min_p_threshold
from .ops.mirostat import _mirostat_, mirostat_update
from .ops.no_repeat_ngram import _no_repeat_ngram_
from .ops.penalties import _penalties_, window
from .ops.smoothing import _smoothing_
from .ops.temperature import _temperature_
from .ops.tfs import _tfs_
from .ops.top_a import _top_a_
from .ops._common import check_history
from .ops.top_k import _top_k_
from .ops.top_n_sigma import _top_n_sigma_
from .ops.top_n_sigma import threshold as sigma_threshold
from .ops.top_p import _top_p_, nucleus_candidates
from .ops.typical import _typical_p_
from .ops.xtc import _xtc_
from .params import SamplingParams, parse_samplers
from .pick import Picked, check_rows, pick

NEEDS_IDS = {"logit_bias", "penalties", "dry", "no_repeat_ngram"}  # read token ids: dense only
NOT_AFTER_COMPACTION = NEEDS_IDS | {"tfs"}  # TFS depends on the row length (see ops.tfs)
COMPACTORS = ("top_k", "min_p", "top_n_sigma", "top_p")
SPARSE_EDITS = {"penalties", "logit_bias"}  # stages that touch only known tokens (see _sparse_top_k)
TRUNCATION = {  # stage -> (in-place kernel, its knob)
    "top_n_sigma": (_top_n_sigma_, "top_n_sigma"), "top_k": (_top_k_, "top_k"),
    "tfs": (_tfs_, "tfs_z"), "typical_p": (_typical_p_, "typical_p"), "top_p": (_top_p_, "top_p"),
    "min_p": (_min_p_, "min_p"), "top_a": (_top_a_, "top_a"), "epsilon": (_epsilon_, "epsilon_cutoff"),
    "eta": (_eta_, "eta_cutoff"),
}


class Chain:
    def __init__(self, samplers: SamplingParams | str | Sequence[str] = "llama.cpp"):
        if isinstance(samplers, SamplingParams):
            self.names = samplers.chain
        else:
            names = list([samplers] if isinstance(samplers, str) else samplers)
            miro = "mirostat" in [str(n).strip().lower() for n in names]
            names = [n for n in names if str(n).strip().lower() != "mirostat"]
            self.names = (parse_samplers(names[0] if len(names) == 1 else names) if names else ()
                          ) + (("mirostat",) if miro else ())
        self.mu: Tensor | None = None  # mirostat's per-row control value
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
    def __call__(self, logits: Tensor, batch: Batch) -> Tensor:
        """Processed dense logits ``[B, V]``; the caller's tensor is left untouched."""
        self._enter(logits, batch)
        x = logits.to(torch.float32, copy=True)  # returned to the caller: not the reused buffer
        for name in self._active(batch):
            x = self._apply(name, x, batch, logits.shape[1])
        return x

    def stages(self, logits: Tensor, batch: Batch) -> list[tuple[str, Tensor]]:
        """The dense logits after each active stage, in order (for inspection and teaching)."""
        self._enter(logits, batch)
        x, out = logits.to(torch.float32, copy=True), []
        for name in self._active(batch):
            x = self._apply(name, x, batch, logits.shape[1])
            out.append((name, x.clone()))
        return out

    def candidates(self, logits: Tensor, batch: Batch) -> Candidates:
        """The survivors of the chain as `Candidates` (same values as ``__call__``)."""
        V = logits.shape[1]
        stages = self._active(batch)
        at = self._compaction_point(stages, batch, V)
        if at is not None and stages[at] == "top_k" and set(stages[:at]) <= SPARSE_EDITS:
            self._enter(logits, batch, values=False)  # rows are checked on the top-k's maximum
            c = self._sparse_top_k(logits, batch, stages[:at])
            if c is not None:
                for name in stages[at + 1:]:
                    c.logits = self._apply(name, c.logits, batch, V)
                return c
        self._enter(logits, batch)
        if at is None:  # no compaction: the result may be the whole row, so not the reused buffer
            x = logits.to(torch.float32, copy=True)
            for name in stages:
                x = self._apply(name, x, batch, V)
            return Candidates.from_dense(x)
        x = logits if at == 0 and logits.dtype == torch.float32 else self._copy(logits)
        for name in stages[:at]:
            x = self._apply(name, x, batch, V)
        c = self._compact(stages[at], x, batch)
        for name in stages[at + 1:]:
            c.logits = self._apply(name, c.logits, batch, V)
        return c

    def sample(self, logits: Tensor, batch: Batch, *, raw_logprobs: bool = False,
               top_n: int = 0) -> Picked:
        """candidates → pick → accept: one token per row."""
        c = self.candidates(logits, batch)
        picked = pick(c, seed=batch.seed, step=batch.step, greedy=batch.knob("temperature") == 0,
                      raw_logits=logits if raw_logprobs else None, top_n=top_n)
        self.accept(picked, batch)
        return picked

    def accept(self, picked: Picked, batch: Batch) -> None:
        """Let stateful samplers learn which token won (mirostat's ``mu`` update)."""
        if "mirostat" in self.names and batch.active("mirostat"):
            mu = self._mu(batch)
            new = mirostat_update(mu, picked.logprob, mirostat_tau=batch.knob("mirostat_tau"),
                                  mirostat_eta=batch.knob("mirostat_eta"))
            self.mu = torch.where(batch.knob("mirostat") > 0, new, mu)

    def select(self, index: Tensor) -> Chain:
        """Follow the batch's rows: shrink, reorder or repeat the per-row state (in place)."""
        if self.mu is not None:
            self.mu = self.mu[torch.as_tensor(index, dtype=torch.int64, device=self.mu.device)]
        return self

    # -- internals ------------------------------------------------------------------------------
    def _active(self, batch: Batch) -> list[str]:
        missing = [n for n in batch._active if batch.active(n) and n not in self.names]
        if missing:
            raise TemperanceError(f"the batch uses {', '.join(missing)} but this chain ({self}) has no "
                                  f"such stage; build the chain from the rows' params (Chain.for_batch)")
        return [n for n in self.names if batch.active(n)]

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
                hc = torch.where(h >= 0, column[:, : h.shape[1]], -1)
                _penalties_(edited, hc, batch.knob("repetition_penalty"), batch.knob("frequency_penalty"),
                            batch.knob("presence_penalty"), batch.knob("penalty_last_n"))
        k = batch.knob("top_k")
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
        if "logit_bias" in pre and any(v == float("-inf") for p in batch.params for v in p.logit_bias.values()):
            _check_not_empty(vals, "logit_bias banned every token")
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
        if self.mu is None or self.mu.shape[0] != len(batch):
            self.mu = 2 * batch.knob("mirostat_tau")
        return self.mu

    @staticmethod
    def _compaction_point(stages: list[str], batch: Batch, V: int) -> int | None:
        for i, name in enumerate(stages):
            if name in COMPACTORS and batch.all_active(name):
                if any(s in NOT_AFTER_COMPACTION for s in stages[i + 1:]):
                    return None
                if name == "top_k" and int(batch.knob("top_k").max()) >= V:
                    return None
                return i
        return None  # (stages before the compaction point run densely, as in __call__)

    def _compact(self, name: str, x: Tensor, batch: Batch) -> Candidates:
        """Run truncation stage ``name`` on dense ``x`` and return exactly its survivors."""
        V = x.shape[1]
        if name == "min_p":
            return Candidates.at_least(x, min_p_threshold(x, batch.knob("min_p")))
        if name == "top_n_sigma":
            return Candidates.at_least(x, sigma_threshold(x, batch.knob("top_n_sigma")))
        if name == "top_p":
            return nucleus_candidates(x, batch.knob("top_p"))
        k = batch.knob("top_k").view(-1, 1)  # top_k
        kmax = int(k.max())
        vals, ids = chunked_topk(x, min(kmax + 1, V))
        if kmax < V:
            if bool((vals.gather(1, k) == vals.gather(1, k - 1)).any()):  # boundary tie
                return Candidates.from_dense(_top_k_(x.clone(), batch.knob("top_k")))
            vals, ids = vals[:, :kmax], ids[:, :kmax]
        vals = vals.masked_fill(torch.arange(vals.shape[1], device=x.device) >= k, float("-inf"))
        ids, order = torch.sort(ids, dim=-1)
        return Candidates(vals.gather(1, order), ids, V)

    def _apply(self, name: str, x: Tensor, batch: Batch, V: int) -> Tensor:
        k = batch.knob
        if name == "logit_bias":
            x = _logit_bias_(x, *batch.logit_bias(V))
            if any(v == float("-inf") for p in batch.params for v in p.logit_bias.values()):
                _check_not_empty(x, "logit_bias banned every token")
            return x
        if name == "penalties":
            return _penalties_(x, batch.history, k("repetition_penalty"), k("frequency_penalty"),
                               k("presence_penalty"), k("penalty_last_n"))
        if name == "dry":
            return _dry_(x, batch.history, k("dry_multiplier"), k("dry_base"),
                         k("dry_allowed_length"), k("dry_penalty_last_n"), batch.dry_breakers)
        if name == "no_repeat_ngram":
            x = _no_repeat_ngram_(x, batch.history, k("no_repeat_ngram_size"))
            _check_not_empty(x, "no_repeat_ngram banned every token")
            return x
        if name == "temperature":
            if any(p.dynatemp_range > 0 for p in batch.params):
                x = _dynatemp_(x, k("temperature"), k("dynatemp_range"), k("dynatemp_exponent"))
            else:
                T = {p.temperature for p in batch.params}
                x = _temperature_(x, T.pop() if len(T) == 1 else k("temperature"))
            if any(p.smoothing_factor > 0 for p in batch.params):  # not on greedy rows
                f = torch.where(k("temperature") > 0, k("smoothing_factor"), 0.0)
                x = _smoothing_(x, f, k("smoothing_curve"))
            return x
        if name == "xtc":
            return _xtc_(x, k("xtc_probability"), k("xtc_threshold"), batch.seed, batch.step)
        if name == "mirostat":
            return _mirostat_(x, self._mu(batch), k("mirostat"), V)
        fn, knob = TRUNCATION[name]
        return fn(x, k(knob))


def _check_not_empty(x: Tensor, why: str) -> None:
    empty = ~torch.isfinite(x.amax(-1))
    if bool(empty.any()):
        rows = empty.nonzero().view(-1).tolist()
        raise TemperanceError(f"row {rows[0]} has no token left: {why}")

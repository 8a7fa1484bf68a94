"""temperance's chain as SGLang's custom logit processor.

SGLang (0.5.x) lets a request carry its own logit processor: a `CustomLogitProcessor` subclass,
serialised with ``to_str()``, plus per-request ``custom_params``. The server must run with
``--enable-custom-logit-processor`` (it then unpickles code that clients send: only for trusted
clients). Our knobs go into ``custom_params`` with the field names of ``temperance serve``::

    from temperance.sglang import CustomLogitProcessor
    requests.post(f"{url}/generate", json={
        "text": "Once upon a time",
        "custom_logit_processor": CustomLogitProcessor.to_str(),
        "sampling_params": {"max_new_tokens": 64, "temperature": 1.0,
                            "custom_params": {"min_p": 0.1, "temperature": 3.0, "seed": 0}}})

SGLang applies it (``Sampler._preprocess_logits``) to the rows that use it, after its own penalties
and grammar masks and before its temperature / top-k / top-p / min-p, so leave those at their
neutral values (temperature 1) and give ours in ``custom_params``. Each row's dict also carries
``"__req__"``, a proxy of SGLang's request: history (penalties, DRY) = its ``origin_input_ids`` +
``output_ids``; the step (XTC's coin) = ``len(output_ids)``. Like vLLM, SGLang draws the token with
its own RNG: the distribution is ours, the exact tokens are not.

**No state between steps.** SGLang builds a fresh processor for every batch and gives it only the
logits and the params, so nothing is remembered from one step to the next. For mirostat this means
it cannot work here: its ``mu`` must learn from every chosen token under the previous step's
distribution, which is gone by then. A mirostat request is refused (logged, row left as SGLang
made it). Everything else in the chain is a function of the logits, the knobs, the history and
(seed, step), so it is exact.

Errors: the hook has no validation step and runs inside SGLang's scheduler, where raising would fail
the whole batch, so a bad knob is logged and that row is left unprocessed. Check knobs on the
client with `CustomLogitProcessor.validate` (raises `TemperanceError` naming the knob).

DRY's string sequence breakers need a tokenizer: set `CustomLogitProcessor.TOKENIZER` (a name or
path ``AutoTokenizer`` can load offline) on a subclass, or send ``"dry_sequence_breakers": []``.

SGLang itself is not installable on a CPU-only machine (it needs CUDA torch, flashinfer and its
kernels), so this module is tested on hand-built inputs (``tests/test_sglang.py``), not inside
SGLang. sglang is not a dependency: without it the same class derives from a local stand-in for
SGLang's abstract base (the hook requires a subclass of SGLang's ABC when SGLang is present).
"""

from __future__ import annotations

import functools
import json
import logging
from abc import ABC, abstractmethod
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from .batch import Batch
from .chain import Chain
from .errors import TemperanceError
from .params import SamplingParams
from .request import GEN_PARAMS, IGNORED, STRUCTURED, params_from_request

try:
    from sglang.srt.sampling.custom_logit_processor import CustomLogitProcessor as _Base
except ImportError:  # SGLang absent (e.g. any CPU machine): a stand-in with the same shape

    class _Base(ABC):  # type: ignore[no-redef]
        """Stand-in for ``sglang.srt.sampling.custom_logit_processor.CustomLogitProcessor``."""

        @abstractmethod
        def __call__(self, logits: Tensor, custom_param_list: list[dict] | None = None) -> Tensor:
            raise NotImplementedError

        @classmethod
        def to_str(cls) -> str:
            """What a client sends as ``custom_logit_processor`` (SGLang's format)."""
            try:
                import dill
            except ImportError as e:
                raise TemperanceError("to_str needs dill (SGLang's serialiser): pip install dill") from e
            return json.dumps({"callable": dill.dumps(cls).hex()})

__all__ = ["CustomLogitProcessor"]

REQ = "__req__"
log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1024)
def _parse(canonical: str) -> SamplingParams:
    knobs = json.loads(canonical)
    theirs = sorted(k for k in knobs if k in GEN_PARAMS or k in IGNORED or k in STRUCTURED)
    if theirs:
        raise TemperanceError(f"{', '.join(theirs)} in custom_params is a generation option: set it "
                              "in SGLang's sampling_params")
    params, _ = params_from_request(knobs)
    if params.mirostat:
        raise TemperanceError(f"mirostat={params.mirostat} needs state between steps (its mu), which "
                              "SGLang's custom logit processor does not keep; use vLLM's processor "
                              "or temperance's own loop for mirostat")
    return params


@functools.lru_cache(maxsize=16)
def _breakers(tokenizer: str, breakers: tuple[str, ...]) -> list[tuple[int, ...]]:
    from transformers import AutoTokenizer

    from .generate import dry_breakers_for
    from .runtime.hf import HFTokenizer

    tok = HFTokenizer(AutoTokenizer.from_pretrained(tokenizer, local_files_only=True))
    return dry_breakers_for([SamplingParams(dry_multiplier=1.0, dry_sequence_breakers=breakers)], tok)[0]


class CustomLogitProcessor(_Base):
    """temperance's chain for SGLang's custom-logit-processor hook (see the module docstring)."""

    TOKENIZER: str | None = None  # for DRY's string breakers (a name or path), None = not available

    @classmethod
    def validate(cls, custom_params: Mapping[str, Any]) -> SamplingParams:
        """Client-side check of ``custom_params``: our `SamplingParams`, or a `TemperanceError`."""
        if not isinstance(custom_params, Mapping):
            raise TemperanceError(f"custom_params must be an object, got {custom_params!r}")
        knobs = {k: v for k, v in custom_params.items() if k != REQ}
        return _parse(json.dumps(knobs, sort_keys=True))

    def __call__(self, logits: Tensor, custom_param_list: Sequence[dict] | None = None) -> Tensor:
        if not custom_param_list:
            return logits
        rows: dict[tuple[str, ...], list[tuple[int, SamplingParams, Any]]] = {}
        for i, d in enumerate(custom_param_list):
            if not d or all(k == REQ for k in d):
                continue  # no knobs: untouched
            try:
                p = self.validate(d)
                breakers = self._dry(p)
            except TemperanceError as e:
                log.error("temperance: row %d left unprocessed: %s", i, e)
                continue
            rows.setdefault(p.chain, []).append((i, p, (d.get(REQ), breakers)))
        for order, group in rows.items():
            self._run(logits, order, group)
        return logits

    def _dry(self, p: SamplingParams) -> list[tuple[int, ...]]:
        if not (p.active("dry") and p.dry_sequence_breakers):
            return []
        if self.TOKENIZER is None:
            raise TemperanceError("DRY's dry_sequence_breakers are strings and no tokenizer is set: "
                                  "set CustomLogitProcessor.TOKENIZER on a subclass, or send "
                                  "dry_sequence_breakers: []")
        return _breakers(self.TOKENIZER, p.dry_sequence_breakers)

    @staticmethod
    def _run(logits: Tensor, order: tuple[str, ...], group: list) -> None:
        index = [i for i, _, _ in group]
        params = [p for _, p, _ in group]
        reqs = [r for _, _, (r, _) in group]
        history = [list(getattr(r, "origin_input_ids", None) or []) + list(getattr(r, "output_ids", None) or [])
                   for r in reqs]
        steps = [len(getattr(r, "output_ids", None) or []) for r in reqs]
        seeds = [p.seed if p.seed is not None else int(torch.randint(0, 2**62, ())) for p in params]
        batch = Batch(params, history=history, seed=torch.tensor(seeds, dtype=torch.int64),
                      step=torch.tensor(steps, dtype=torch.int64),
                      dry_breakers=[b for _, _, (_, b) in group], device=logits.device)
        idx = torch.tensor(index, dtype=torch.int64, device=logits.device)
        try:
            out = Chain(list(order))(logits.index_select(0, idx), batch)
        except TemperanceError as e:
            log.error("temperance: rows %s left unprocessed: %s", index, e)
            return
        greedy = torch.tensor([p.temperature == 0 for p in params], device=logits.device)
        if bool(greedy.any()):  # our temperature 0: only the argmax (lowest id on ties) survives
            top = torch.zeros_like(out, dtype=torch.bool).scatter_(1, out.argmax(-1, keepdim=True), True)
            out.masked_fill_(greedy.view(-1, 1) & ~top, float("-inf"))
        logits.index_copy_(0, idx, out.to(logits.dtype))

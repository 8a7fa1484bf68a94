"""Our chain inside transformers' `model.generate`: a logits processor.

`LogitsProcessor(params)` is a callable `(input_ids, scores) -> scores` (duck-typed; transformers is
not imported), so it goes into `model.generate(..., logits_processor=[...])` and brings the samplers
transformers lacks (top-nσ, XTC, DRY, mirostat, top-a, tfs, ...) in our order:

    proc = LogitsProcessor(SamplingParams(top_n_sigma=1.0, xtc_probability=0.5, seed=0))
    model.generate(ids, do_sample=True, top_k=None, top_p=None, temperature=None,
                   logits_processor=[proc])

It returns the chain's dense processed logits (`-inf` = removed); transformers then draws from
them (`do_sample=True`) or takes the argmax (`do_sample=False`). Notes:

- temperature 0 (greedy) is not a temperature here: use `do_sample=False` for greedy; with
  `do_sample=True` transformers would sample from the truncated but unscaled distribution.
- turn off transformers' own warpers (`top_k=None, top_p=None, temperature=None`), or they run
  after ours (the model's generation config may set them).
- history = `input_ids` (prompt + output), which is what penalties and DRY see. With left padding
  the pad ids are counted as history, unless `pad_token_id=` is given: then those ids count as
  "no token" (careful when pad == eos: eos tokens inside the text are then ignored too).
- DRY breakers must be token-id sequences (`dry_breakers=`), or a `tokenizer=` (our
  `HFTokenizer`) to expand the string breakers.
- mirostat learns which token won from the next call's `input_ids` (transformers draws it).
- one processor per `generate` call; it resets itself when the sequence gets shorter (a new call).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from .batch import Batch
from .chain import Chain
from .errors import TemperanceError
from .params import SamplingParams
from .pick import Picked
from .states import MirostatState

__all__ = ["LogitsProcessor"]


class LogitsProcessor:
    """Run a temperance `Chain` as a transformers logits processor.

    Args:
        params: the knobs (one `SamplingParams` for every row of the generate call).
        pad_token_id: ids to treat as "no token" in the history (left padding).
        dry_breakers: DRY breakers as token-id sequences (overrides the string breakers).
        tokenizer: an `HFTokenizer`, to expand DRY's string breakers when `dry_breakers` is None.
    """

    def __init__(self, params: SamplingParams, *, pad_token_id: int | None = None,
                 dry_breakers: Sequence[Sequence[int]] | None = None, tokenizer: Any = None):
        if not isinstance(params, SamplingParams):
            raise TemperanceError(f"LogitsProcessor needs a SamplingParams, got {type(params).__name__}")
        self.params = params
        self.pad_token_id = pad_token_id
        if dry_breakers is None and params.active("dry") and params.dry_sequence_breakers:
            if tokenizer is None:
                raise TemperanceError("DRY's sequence breakers are strings: give dry_breakers= "
                                      "(token-id sequences) or tokenizer=")
            from .generate import dry_breakers_for

            dry_breakers = dry_breakers_for([params], tokenizer)[0]
        self.dry_breakers = [tuple(int(t) for t in b) for b in (dry_breakers or [])]
        self.seed = params.seed if params.seed is not None else int(torch.randint(0, 2**62, ()))
        self.reset()

    def reset(self) -> None:
        self.chain = Chain(list(self.params.chain))
        self.state: MirostatState | None = None  # mirostat's mu, made at the first call
        self._start: int | None = None      # sequence length at the first call
        self._last: tuple[Tensor, Batch] | None = None  # (processed logprobs, batch) of last call

    def _batch(self, input_ids: Tensor) -> Batch:
        B, L = input_ids.shape
        history = input_ids.to(torch.int64)
        if self.pad_token_id is not None:
            history = history.masked_fill(history == self.pad_token_id, -1)
        return Batch([self.params] * B, history=history,
                     seed=torch.arange(B, dtype=torch.int64) + self.seed,
                     step=L - self._start, dry_breakers=[self.dry_breakers] * B,
                     device=input_ids.device)

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        L = input_ids.shape[1]
        if self._start is None or L < self._start + (0 if self._last is None else 1) \
                or (self._last is not None and self._last[0].shape[0] != input_ids.shape[0]):
            self.reset()
            self._start = L
        batch = self._batch(input_ids)
        if "mirostat" in self.chain.names and self.state is None:
            self.state = MirostatState(batch)
        if self._last is not None and self.state is not None:
            logq, prev = self._last  # teach mirostat the token transformers chose last step
            chosen = input_ids[:, -1:].to(logq.device)
            self.state.accept(Picked(chosen.view(-1), logq.gather(1, chosen).view(-1)), prev)
        out = self.chain(scores.float(), batch, self.state)
        if "mirostat" in self.chain.names:
            self._last = (torch.log_softmax(out, dim=-1), batch)
        else:
            self._last = (out[:, :0], batch)  # only the shape is needed to detect a new call
        return out.to(scores.dtype)

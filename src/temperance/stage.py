"""Stage and Knob: how a sampler declares itself, once, next to its op.

Every sampler file in `temperance.ops` ends with one ``STAGE = Stage(...)``: its name in a chain,
its knobs (name, neutral value, valid range, one-line meaning, CLI flag, request field names), when
it is active, and the kernel the chain runs. Everything else is derived from those declarations:
`SamplingParams`' fields and validation messages, the default order, the chain's dispatch, the
CLI's flags, the request parser's field names and the playground's sampler list. Adding a sampler
means writing one file and listing its ``STAGE`` in ``ops/__init__.py``.

A knob's ``range`` is the text users read in errors (``top_p must be in [0, 1] (1 = off), got
1.5``); ``valid`` is the same rule as a predicate. Integer knobs accept integral floats (``2.0``)
and are stored as ``int``. Knobs that are not numbers (``logit_bias``, ``dry_sequence_breakers``)
give ``check`` instead: it returns the canonical value or raises `TemperanceError`.

A stage's ``apply(x, batch)`` edits the chain's own working tensor ``x`` (``[B, V]``, or the
compacted ``[B, K]`` survivors for stages that only look at values) in place and returns it.

>>> k = Knob("top_p", 1.0, lambda x: 0 <= x <= 1, "[0, 1] (1 = off)", "nucleus mass", "--top-p")
>>> k.check(0.9), k.request_names
(0.9, ('top_p',))
>>> k.check(2)
Traceback (most recent call last):
...
temperance.errors.TemperanceError: top_p must be in [0, 1] (1 = off), got 2.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from .errors import TemperanceError

if TYPE_CHECKING:
    from torch import Tensor

    from .batch import Batch
    from .candidates import Candidates


@dataclass(frozen=True)
class Knob:
    name: str                                   # the SamplingParams field
    neutral: Any                                # the value at which the sampler is the identity
    valid: Callable[[Any], bool] | None         # numeric knobs: the valid range as a predicate
    range: str                                  # the valid range as people read it
    help: str                                   # one line: what the knob means
    flag: str | None = None                     # CLI flag (llama.cpp's name where it has one)
    request: tuple[str, ...] = ()               # request field names, canonical first (default: name)
    integer: bool = False
    check_value: Callable[[Any], Any] | None = None  # non-numeric knobs: value -> canonical value
    from_json: Callable[[Any], Any] | None = None   # a request's form -> value (default: check)
    parse_flag: Callable[[list[str]], Any] | None = None  # repeatable CLI flag: strings -> value

    @property
    def numeric(self) -> bool:
        return self.check_value is None

    @property
    def request_names(self) -> tuple[str, ...]:
        """Field names a request may use; the canonical one (llama.cpp's server name) first."""
        return self.request or (self.name,)

    def check(self, value: Any) -> Any:
        """Validate one value; return it canonical (float, int, or the knob's own form)."""
        if not self.numeric:
            return self.check_value(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TemperanceError(f"{self.name} must be a number in {self.range}, got {value!r}")
        if self.integer:
            if isinstance(value, float):
                if not value.is_integer():
                    raise TemperanceError(f"{self.name} must be an integer in {self.range}, got {value!r}")
                value = int(value)
            if abs(value) >= 2**31:
                raise TemperanceError(
                    f"{self.name} must be an integer in {self.range} below 2^31, got {value!r}")
        else:
            value = float(value)
        if isinstance(value, float) and math.isnan(value) or not self.valid(value):
            raise TemperanceError(f"{self.name} must be in {self.range}, got {value!r}")
        return value


@dataclass(frozen=True)
class Stage:
    name: str                                   # the name in a sampler order
    knobs: tuple[Knob, ...]                     # the first one turns the stage on (error messages)
    active: Callable[[Any], bool]               # SamplingParams -> does this row use the stage?
    apply: Callable[[Tensor, Batch], Tensor] | None  # in-place kernel on the chain's working tensor
    summary: str                                # one line: what the stage does
    paper: str = ""
    aliases: tuple[str, ...] = ()               # other names accepted in a sampler order
    reads_ids: bool = False                     # needs token ids: runs on dense [B, V] only
    row_length: bool = False                    # result depends on the row length (not after compaction)
    compact: Callable[[Tensor, Batch], Candidates] | None = None  # exact survivors, [B, K]
    in_order: bool = True                       # False: not a position in an order (mirostat)
    part_of: str | None = None                  # runs inside that stage (dynatemp: temperature)

    @property
    def switch(self) -> Knob:
        return self.knobs[0]

    def describe(self) -> dict:
        """JSON-friendly description (the playground's sampler list; ``/v1/samplers``)."""
        return {"name": self.name, "summary": self.summary, "paper": self.paper,
                "knobs": [{"name": k.request_names[0], "field": k.name,
                           "neutral": k.neutral if k.numeric else None, "range": k.range,
                           "help": k.help, "integer": k.integer, "numeric": k.numeric}
                          for k in self.knobs]}


def user_stage(fn: Callable[[Tensor, Any], Tensor]) -> Stage:
    """A caller's own function ``fn(logits [B, V], batch) -> logits`` as a chain stage.

    It is always active, sees dense logits (the chain does not compact before it), may edit its
    argument in place or return a new tensor of the same shape.
    """
    name = getattr(fn, "__name__", type(fn).__name__)
    return Stage(name=name, knobs=(), active=lambda p: True, apply=fn,
                 summary=(fn.__doc__ or "a user stage").strip().split("\n")[0],
                 reads_ids=True, row_length=True)

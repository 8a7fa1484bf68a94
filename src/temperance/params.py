"""SamplingParams: one request's knobs, validated, with neutral defaults and a JSON round trip.

Plain Python, no tensors. Every numeric knob has a *neutral* value at which its sampler is the
identity (and is skipped). The sampler order is data: a list, a ``"a,b,c"`` string, or a preset name.

Chain order (``shared/spec/decisions.md``), the ``llama.cpp`` preset and our default::

    logit_bias → penalties → dry → no_repeat_ngram → top_n_sigma → top_k → tfs → typical_p →
    top_p → min_p → top_a → epsilon → eta → xtc → temperature (with dynatemp and smoothing) → pick

Truncation before temperature keeps min-p meaningful at very high temperature (T = 100 with min-p
stays coherent). The presets ``vllm`` / ``openai`` put temperature first::

    logit_bias → penalties → temperature → top_k → top_p → min_p

and ``hf`` follows transformers' processor order. Mirostat (1 or 2), when on, replaces truncation
and the draw as llama.cpp does: only logit_bias, penalties and temperature run before it.

A knob that is set (not neutral) while its sampler is missing from the order is an error, not a
silent no-op.

>>> p = SamplingParams(temperature=1.5, min_p=0.1)
>>> " → ".join(p.samplers[:3])
'logit_bias → penalties → dry'
>>> SamplingParams.from_dict(p.to_dict()) == p
True
>>> SamplingParams(top_p=1.5)
Traceback (most recent call last):
...
temperance.errors.TemperanceError: top_p must be in [0, 1] (1 = off), got 1.5
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, make_dataclass
from typing import Any, Mapping, Sequence

from .errors import TemperanceError
from .ops import FIELDS, KNOBS, STAGES
from .ops.dry import DEFAULT_BREAKERS as DEFAULT_DRY_BREAKERS
from .ops.mirostat import BEFORE as MIROSTAT_BEFORE
from .ops.temperature import is_greedy
from .stage import Knob, Stage

# ----------------------------------------------------------------------------------------------
# Derived from the stages each ops file declares (temperance.ops.STAGES).

STAGE: dict[str, Stage] = {s.name: s for s in STAGES}
SAMPLERS = tuple(s.name for s in STAGES if s.in_order)  # the llama.cpp-compatible default order
ACTIVE = {s.name: s.active for s in STAGES}              # which knobs make each stage act
ALIASES = {a: s.name for s in STAGES for a in s.aliases}

PRESETS: dict[str, tuple[str, ...]] = {
    "llama.cpp": SAMPLERS,
    "vllm": ("logit_bias", "penalties", "temperature", "top_k", "top_p", "min_p"),
    "openai": ("logit_bias", "penalties", "temperature", "top_k", "top_p", "min_p"),
    "hf": ("logit_bias", "penalties", "no_repeat_ngram", "temperature", "top_k", "top_p", "min_p",
           "typical_p", "epsilon", "eta"),
}


def check_knob(name: str, value: Any) -> Any:
    """Validate one knob's value (see `Knob.check`); raises TemperanceError naming it."""
    return FIELDS[name].check(value)


def parse_samplers(value: str | Sequence[str]) -> tuple[str, ...]:
    """Turn a preset name, a ``"a,b,c"`` / ``"a;b;c"`` string or a list into canonical names.

    >>> parse_samplers("top-k; temp")
    ('top_k', 'temperature')
    >>> parse_samplers("vllm")[:3]
    ('logit_bias', 'penalties', 'temperature')
    """
    if isinstance(value, str):
        if value.strip().lower() in PRESETS:
            return PRESETS[value.strip().lower()]
        items = [s for s in value.replace(";", ",").replace(" ", ",").split(",") if s]
    else:
        items = list(value)
    names = []
    for item in items:
        if not isinstance(item, str):
            raise TemperanceError(f"samplers must be names (strings), got {item!r}")
        name = item.strip().lower().replace("-", "_")
        name = ALIASES.get(name, name)
        if name not in SAMPLERS:
            raise TemperanceError(
                f"unknown sampler {item!r} in samplers; valid names: {', '.join(SAMPLERS)}; "
                f"presets: {', '.join(PRESETS)}")
        if name in names:
            raise TemperanceError(f"sampler {name!r} appears twice in samplers {items!r}")
        names.append(name)
    if not names:
        raise TemperanceError("samplers must name at least one sampler (or a preset), got none")
    return tuple(names)


def describe() -> dict:
    """The samplers as data: the default order, the presets, and each stage in the order with its
    knobs (those of stages that run inside it included). Served as ``/v1/samplers``."""
    stages = []
    for s in STAGES:
        if s.in_order:
            d = s.describe()
            d["knobs"] += [k for t in STAGES if t.part_of == s.name for k in t.describe()["knobs"]]
            stages.append(d)
    return {"order": list(SAMPLERS), "presets": {k: list(v) for k, v in PRESETS.items()}, "stages": stages,
            "mirostat": STAGE["mirostat"].describe()}


# ----------------------------------------------------------------------------------------------


class _Params:
    """One request's sampling knobs. Every default is neutral except the order and DRY's breakers.

    ``seed=None`` means "draw one" when the batch is built. The knobs (field, neutral value,
    valid range, meaning) come from the stages in `temperance.ops`:

    """

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        for name, knob in FIELDS.items():
            set_(name, knob.check(getattr(self, name)))
        set_("samplers", parse_samplers(self.samplers))
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or not 0 <= self.seed < 2**63):
            raise TemperanceError(f"seed must be an integer in [0, 2^63) or None, got {self.seed!r}")
        self._check_order()

    def _check_order(self) -> None:
        for s in STAGES:
            if s.name == "mirostat" or not s.active(self):
                continue
            knob, home = s.switch.name, s.part_of or s.name
            if self.mirostat and home not in MIROSTAT_BEFORE:
                raise TemperanceError(
                    f"{knob}={getattr(self, knob)!r} has no effect with mirostat={self.mirostat}: "
                    "mirostat replaces truncation (only logit_bias, penalties and temperature run "
                    "before it); reset it to its neutral value")
            if not self.mirostat and home not in self.samplers:
                raise TemperanceError(
                    f"{knob}={getattr(self, knob)!r} is set but the sampler order has no {home!r} "
                    f"stage (samplers: {','.join(self.samplers)}); add {home!r} to samplers")

    @property
    def chain(self) -> tuple[str, ...]:
        """The stages this request's chain runs, in order (mirostat's reduced chain when on)."""
        if self.mirostat:
            return tuple(s for s in self.samplers if s in MIROSTAT_BEFORE) + ("mirostat",)
        return self.samplers

    def active(self, name: str) -> bool:
        return ACTIVE[name](self)

    @property
    def greedy(self) -> bool:
        """Temperature 0, or below the greedy floor 1e-5 (`temperance.ops.temperature`)."""
        return is_greedy(self.temperature)

    # -- JSON round trip ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["samplers"] = list(self.samplers)
        d["dry_sequence_breakers"] = list(self.dry_sequence_breakers)
        d["logit_bias"] = {str(k): v for k, v in self.logit_bias.items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SamplingParams:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise TemperanceError(f"unknown sampling parameter(s) {', '.join(map(repr, unknown))}; "
                                  f"valid: {', '.join(sorted(names))}")
        d = dict(d)
        if "dry_sequence_breakers" in d and isinstance(d["dry_sequence_breakers"], list):
            d["dry_sequence_breakers"] = tuple(d["dry_sequence_breakers"])
        return cls(**d)


def _field(k: Knob) -> tuple:
    typ = int if k.integer else float if k.numeric else type(k.neutral)
    default = field(default_factory=dict) if isinstance(k.neutral, dict) else field(default=k.neutral)
    return k.name, typ, default


def _doc(k: Knob) -> str:
    flag = k.flag if isinstance(k.flag, str) else (k.flag or ("",))[0]
    return f"    ``{k.name}`` ({k.neutral!r}; {k.range}; {flag}): {k.help}"


SamplingParams = make_dataclass(
    "SamplingParams",
    [_field(k) for k in FIELDS.values()] + [
        ("samplers", "tuple[str, ...] | str", field(default="llama.cpp")),
        ("seed", "int | None", field(default=None))],
    bases=(_Params,), frozen=True, kw_only=True,
    namespace={"__doc__": _Params.__doc__.rstrip() + "\n\n" + "\n".join(_doc(k) for k in FIELDS.values()) + "\n"})
SamplingParams.__module__ = __name__

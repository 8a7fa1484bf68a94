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
temperance.errors.TemperanceError: top_p must be in (0, 1] (1 = off), got 1.5
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Mapping, Sequence

from .errors import TemperanceError

# ----------------------------------------------------------------------------------------------
# Knobs: neutral value, validity check, the range as people read it.


@dataclass(frozen=True)
class Knob:
    neutral: float | int
    valid: Callable[[float], bool]
    range: str
    integer: bool = False


def _finite(x: float) -> bool:
    return math.isfinite(x)


KNOBS: dict[str, Knob] = {
    "temperature": Knob(1.0, lambda x: _finite(x) and x >= 0, "[0, inf) (0 = greedy)"),
    "dynatemp_range": Knob(0.0, lambda x: _finite(x) and x >= 0, "[0, inf) (0 = off)"),
    "dynatemp_exponent": Knob(1.0, lambda x: _finite(x) and x >= 0, "[0, inf)"),
    "smoothing_factor": Knob(0.0, lambda x: _finite(x) and x >= 0, "[0, inf) (0 = off)"),
    "smoothing_curve": Knob(1.0, lambda x: 1 <= x <= 3, "[1, 3]"),
    "top_k": Knob(0, lambda x: x >= 0, "integers >= 0 (0 = off)", integer=True),
    "top_p": Knob(1.0, lambda x: 0 < x <= 1, "(0, 1] (1 = off)"),
    "min_p": Knob(0.0, lambda x: 0 <= x <= 1, "[0, 1] (0 = off)"),
    "top_n_sigma": Knob(0.0, _finite, "finite reals (<= 0 = off)"),
    "typical_p": Knob(1.0, lambda x: 0 < x <= 1, "(0, 1] (1 = off)"),
    "tfs_z": Knob(1.0, lambda x: 0 <= x <= 1, "[0, 1] (1 = off)"),
    "top_a": Knob(0.0, lambda x: 0 <= x <= 1, "[0, 1] (0 = off)"),
    "epsilon_cutoff": Knob(0.0, lambda x: 0 <= x < 1, "[0, 1) (0 = off)"),
    "eta_cutoff": Knob(0.0, lambda x: 0 <= x < 1, "[0, 1) (0 = off)"),
    "xtc_probability": Knob(0.0, lambda x: 0 <= x <= 1, "[0, 1] (0 = off)"),
    "xtc_threshold": Knob(0.1, lambda x: 0 <= x <= 1, "[0, 1] (> 0.5 = off)"),
    "repetition_penalty": Knob(1.0, lambda x: _finite(x) and x > 0, "(0, inf) (1 = off)"),
    "frequency_penalty": Knob(0.0, _finite, "finite reals (0 = off)"),
    "presence_penalty": Knob(0.0, _finite, "finite reals (0 = off)"),
    "penalty_last_n": Knob(64, lambda x: x >= -1, "integers >= -1 (-1 = whole context, 0 = off)", integer=True),
    "dry_multiplier": Knob(0.0, lambda x: _finite(x) and x >= 0, "[0, inf) (0 = off)"),
    "dry_base": Knob(1.75, lambda x: _finite(x) and x >= 1, "[1, inf)"),
    "dry_allowed_length": Knob(2, lambda x: x >= 1, "integers >= 1", integer=True),
    "dry_penalty_last_n": Knob(-1, lambda x: x >= -1, "integers >= -1 (-1 = whole context, 0 = off)", integer=True),
    "no_repeat_ngram_size": Knob(0, lambda x: x >= 0, "integers >= 0 (0 = off)", integer=True),
    "mirostat": Knob(0, lambda x: x in (0, 1, 2), "{0, 1, 2} (0 = off)", integer=True),
    "mirostat_tau": Knob(5.0, lambda x: _finite(x) and x >= 0, "[0, inf)"),
    "mirostat_eta": Knob(0.1, lambda x: _finite(x) and x >= 0, "[0, inf)"),
}

DEFAULT_DRY_BREAKERS = ("\n", ":", '"', "*")


def check_knob(name: str, value: Any) -> float | int:
    """Validate one scalar knob; return it as float (or int). Raises TemperanceError."""
    knob = KNOBS[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TemperanceError(f"{name} must be a number in {knob.range}, got {value!r}")
    if knob.integer:
        if isinstance(value, float):
            if not value.is_integer():
                raise TemperanceError(f"{name} must be an integer in {knob.range}, got {value!r}")
            value = int(value)
        if abs(value) >= 2**31:
            raise TemperanceError(f"{name} must be an integer in {knob.range} below 2^31, got {value!r}")
    else:
        value = float(value)
    if isinstance(value, float) and math.isnan(value) or not knob.valid(value):
        raise TemperanceError(f"{name} must be in {knob.range}, got {value!r}")
    return value


# ----------------------------------------------------------------------------------------------
# Sampler names, presets, order parsing.

SAMPLERS = (
    "logit_bias", "penalties", "dry", "no_repeat_ngram", "top_n_sigma", "top_k", "tfs",
    "typical_p", "top_p", "min_p", "top_a", "epsilon", "eta", "xtc", "temperature",
)  # the llama.cpp-compatible default order; "mirostat" is added by the chain when it is on

PRESETS: dict[str, tuple[str, ...]] = {
    "llama.cpp": SAMPLERS,
    "vllm": ("logit_bias", "penalties", "temperature", "top_k", "top_p", "min_p"),
    "openai": ("logit_bias", "penalties", "temperature", "top_k", "top_p", "min_p"),
    "hf": ("logit_bias", "penalties", "no_repeat_ngram", "temperature", "top_k", "top_p", "min_p",
           "typical_p", "epsilon", "eta"),
}

ALIASES = {
    "temp": "temperature", "typical": "typical_p", "typ_p": "typical_p", "nucleus": "top_p",
    "tail_free": "tfs", "tfs_z": "tfs", "epsilon_cutoff": "epsilon", "eta_cutoff": "eta",
    "repetition_penalty": "penalties", "repeat_penalty": "penalties", "penalty": "penalties",
    "nsigma": "top_n_sigma", "top_nsigma": "top_n_sigma", "bias": "logit_bias",
    "no_repeat_ngram_size": "no_repeat_ngram",
}

# Which knobs make each sampler do something (host-side predicates on plain Python values).
ACTIVE: dict[str, Callable[[SamplingParams], bool]] = {
    "logit_bias": lambda p: bool(p.logit_bias),
    "penalties": lambda p: p.penalty_last_n != 0 and (
        p.repetition_penalty != 1 or p.frequency_penalty != 0 or p.presence_penalty != 0),
    "dry": lambda p: p.dry_multiplier > 0 and p.dry_penalty_last_n != 0,
    "no_repeat_ngram": lambda p: p.no_repeat_ngram_size > 0,
    "top_n_sigma": lambda p: p.top_n_sigma > 0,
    "top_k": lambda p: p.top_k > 0,
    "tfs": lambda p: p.tfs_z < 1,
    "typical_p": lambda p: p.typical_p < 1,
    "top_p": lambda p: p.top_p < 1,
    "min_p": lambda p: p.min_p > 0,
    "top_a": lambda p: p.top_a > 0,
    "epsilon": lambda p: p.epsilon_cutoff > 0,
    "eta": lambda p: p.eta_cutoff > 0,
    "xtc": lambda p: p.xtc_probability > 0 and p.xtc_threshold <= 0.5,
    "temperature": lambda p: p.temperature not in (0.0, 1.0) or (
        p.temperature > 0 and (p.dynatemp_range > 0 or p.smoothing_factor > 0)),
    "mirostat": lambda p: p.mirostat > 0,
}

# The knob that turns each sampler on, for error messages.
_SWITCH = {
    "logit_bias": "logit_bias", "penalties": "repetition_penalty", "dry": "dry_multiplier",
    "no_repeat_ngram": "no_repeat_ngram_size", "top_n_sigma": "top_n_sigma", "top_k": "top_k",
    "tfs": "tfs_z", "typical_p": "typical_p", "top_p": "top_p", "min_p": "min_p",
    "top_a": "top_a", "epsilon": "epsilon_cutoff", "eta": "eta_cutoff",
    "xtc": "xtc_probability", "temperature": "temperature",
}

MIROSTAT_BEFORE = ("logit_bias", "penalties", "temperature")  # what still runs under mirostat


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


# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplingParams:
    """One request's sampling knobs. Every default is neutral except the order and DRY's breakers.

    Knob meanings and papers are in the docstrings of `temperance.ops`; validity ranges are in
    `KNOBS`. `seed=None` means "draw one" when the batch is built.
    """

    temperature: float = 1.0
    dynatemp_range: float = 0.0
    dynatemp_exponent: float = 1.0
    smoothing_factor: float = 0.0
    smoothing_curve: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    top_n_sigma: float = 0.0
    typical_p: float = 1.0
    tfs_z: float = 1.0
    top_a: float = 0.0
    epsilon_cutoff: float = 0.0
    eta_cutoff: float = 0.0
    xtc_probability: float = 0.0
    xtc_threshold: float = 0.1
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    penalty_last_n: int = 64
    dry_multiplier: float = 0.0
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    dry_penalty_last_n: int = -1
    dry_sequence_breakers: tuple[str, ...] = DEFAULT_DRY_BREAKERS
    no_repeat_ngram_size: int = 0
    logit_bias: Mapping[int, float] = field(default_factory=dict)
    mirostat: int = 0
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    samplers: tuple[str, ...] | str = "llama.cpp"
    seed: int | None = None

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        for name in KNOBS:
            set_(name, check_knob(name, getattr(self, name)))
        set_("samplers", parse_samplers(self.samplers))
        set_("logit_bias", _check_bias(self.logit_bias))
        breakers = self.dry_sequence_breakers
        if isinstance(breakers, str) or not all(isinstance(b, str) and b for b in breakers):
            raise TemperanceError(
                f"dry_sequence_breakers must be a list of non-empty strings, got {breakers!r}")
        set_("dry_sequence_breakers", tuple(breakers))
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or not 0 <= self.seed < 2**63):
            raise TemperanceError(f"seed must be an integer in [0, 2^63) or None, got {self.seed!r}")
        self._check_order()

    def _check_order(self) -> None:
        if self.mirostat:
            for name, active in ACTIVE.items():
                if name not in MIROSTAT_BEFORE and name != "mirostat" and active(self):
                    raise TemperanceError(
                        f"{_SWITCH[name]}={getattr(self, _SWITCH[name])!r} has no effect with "
                        f"mirostat={self.mirostat}: mirostat replaces truncation (only logit_bias, "
                        "penalties and temperature run before it); reset it to its neutral value")
            return
        for name, active in ACTIVE.items():
            if name != "mirostat" and name not in self.samplers and active(self):
                knob = _SWITCH[name]
                raise TemperanceError(
                    f"{knob}={getattr(self, knob)!r} is set but the sampler order has no {name!r} "
                    f"stage (samplers: {','.join(self.samplers)}); add {name!r} to samplers")

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
        return self.temperature == 0

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


def _check_bias(bias: Any) -> dict[int, float]:
    if not isinstance(bias, Mapping):
        raise TemperanceError(f"logit_bias must be a mapping token id -> bias, got {bias!r}")
    out = {}
    for k, v in bias.items():
        try:
            tok = int(k)
        except (TypeError, ValueError):
            raise TemperanceError(f"logit_bias keys must be token ids (integers >= 0), got {k!r}")
        if tok < 0 or (isinstance(k, float) and not k.is_integer()):
            raise TemperanceError(f"logit_bias keys must be token ids (integers >= 0), got {k!r}")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v) or v == math.inf:
            raise TemperanceError(
                f"logit_bias[{tok}] must be a finite number or -inf (ban), got {v!r}")
        out[tok] = float(v)
    return out

"""The grid: which sampler configurations an evaluation runs, parsed once for every command.

A *configuration* is a request body with the server's field names (``min_p``, ``top_p``,
``top_n_sigma``, ``repeat_penalty``, ``xtc_probability``, ``samplers`` ...), turned into
`SamplingParams` by `temperance.request.params_from_request`, the one parser the server and the
CLI share. On the command line::

    --configs "min_p=0.1; top_p=0.9; top_n_sigma=1; temperature=0; "   # ';' between configs
    --temperatures 0.7,1,2,3                                            # for configs without one

Each configuration is a comma list of ``knob=value``; an empty one is pure sampling (every
truncation off). ``knob=a|b|c`` expands into one configuration per value (the critique's "each
sampler's own knob values"), and a configuration without ``temperature`` is crossed with every
``--temperatures`` value, so ``"min_p=0.05|0.1"`` with ``--temperatures 1,2`` is four rows.
``samplers`` takes names separated by spaces (``samplers=top_k temperature``) or a preset.
Seeds are not part of a configuration: the harness sets them (common random numbers, see
`temperance.eval.generate`).

**Sampler order.** A configuration that gives neither ``samplers`` nor ``preset`` gets the grid's
order (``--samplers``; default ``temperature-first``: temperature, then every truncation). The
claims under test were made with temperature first (the min-p paper and its critique ran HF and
vLLM, whose warpers scale before they truncate); with the project's default ``llama.cpp`` order,
which truncates first, every truncation sampler's kept set would be temperature-invariant by
construction. The order is recorded in every row (``params.samplers``).

**Families.** Each configuration belongs to a sampler family, named by the samplers it turns on
besides temperature: ``pure`` (none), ``greedy`` (``temperature=0``), ``min_p``, ``top_p``,
``min_p+xtc`` ... Best-of-N compares families at an equal number of configurations.

>>> cs = expand(parse_configs("min_p=0.05|0.1; ; temperature=0"), temperatures=[1.0, 2.0])
>>> [(c.family, c.temperature, c.knobs) for c in cs]  # doctest: +NORMALIZE_WHITESPACE
[('min_p', 1.0, {'min_p': 0.05}), ('min_p', 2.0, {'min_p': 0.05}),
 ('min_p', 1.0, {'min_p': 0.1}), ('min_p', 2.0, {'min_p': 0.1}),
 ('pure', 1.0, {}), ('pure', 2.0, {}), ('greedy', 0.0, {})]
>>> cs[0].label
'min_p=0.05 T=1'
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from ..errors import TemperanceError
from ..params import ACTIVE, SAMPLERS, SamplingParams
from ..request import LLAMA_NAMES, params_from_request

__all__ = ["Config", "TEMPERATURE_FIRST", "parse_configs", "parse_floats", "expand", "family_of",
           "load_grid", "QUICK_CONFIGS"]

# Temperature first, then every truncation in the project's order (what HF and vLLM do).
TEMPERATURE_FIRST = ("logit_bias", "penalties", "dry", "no_repeat_ngram", "temperature") + tuple(
    s for s in SAMPLERS if s not in ("logit_bias", "penalties", "dry", "no_repeat_ngram", "temperature"))
ORDER_NAMES = {"temperature-first": TEMPERATURE_FIRST}

# The grid `--quick` runs: the four samplers of the trends, one knob value each, plus greedy.
QUICK_CONFIGS = "; top_p=0.9; min_p=0.1; top_n_sigma=1; temperature=0"

_TEMPERATURE_NAMES = ("temperature", "temp")
_NOT_KNOBS = ("samplers", "preset", "seed", "logit_bias", "dry_sequence_breakers")


@dataclass(frozen=True)
class Config:
    """One configuration of the grid: the request body, its params and how to label it."""

    body: dict                     # request fields (server names), temperature included
    params: SamplingParams         # what params_from_request made of it
    family: str                    # "pure", "greedy", "min_p", "min_p+xtc", ...
    temperature: float
    knobs: dict = field(default_factory=dict)  # the family's own knob values (canonical names)

    @property
    def label(self) -> str:
        """``min_p=0.1 T=1.5``; ``greedy``; ``pure T=1``."""
        if self.family == "greedy":
            return "greedy"
        knobs = " ".join(f"{k}={_fmt(v)}" for k, v in self.knobs.items()) or self.family
        return f"{knobs} T={_fmt(self.temperature)}"

    @property
    def setting(self) -> str:
        """The label without the temperature: one line of a quality-vs-T plot."""
        return "greedy" if self.family == "greedy" else (
            " ".join(f"{k}={_fmt(v)}" for k, v in self.knobs.items()) or self.family)

    def to_dict(self) -> dict:
        return {"sampler": self.family, "setting": self.setting, "label": self.label,
                "temperature": self.temperature, "knobs": self.knobs, "body": self.body,
                "params": self.params.to_dict()}


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _value(text: str) -> Any:
    """``0.1`` -> 0.1, ``2`` -> 2, ``true``/``false``/``null``, ``inf``; anything else a string."""
    t = text.strip()
    low = t.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("null", "none"):
        return None
    try:
        return int(t)
    except ValueError:
        pass
    try:
        return float(t)
    except ValueError:
        return t


def parse_configs(text: str) -> list[dict]:
    """``"min_p=0.1|0.2; top_p=0.9; "`` -> request bodies, alternatives expanded (see the module)."""
    if not isinstance(text, str):
        raise TemperanceError(f"--configs must be a string, got {type(text).__name__}")
    out: list[dict] = []
    for part in text.split(";"):
        part = part.strip()
        if not part:  # an empty configuration is pure sampling
            out.append({})
            continue
        alts: dict[str, list] = {}
        for item in part.split(","):
            item = item.strip()
            if not item:
                continue
            if "=" not in item:
                raise TemperanceError(f"--configs: {item!r} in configuration {part!r} is not knob=value")
            k, v = item.split("=", 1)
            k = k.strip()
            if not k:
                raise TemperanceError(f"--configs: {item!r} has no knob name")
            if k in alts:
                raise TemperanceError(f"--configs: {k!r} appears twice in configuration {part!r}")
            alts[k] = [_value(x) for x in v.split("|")] if k not in ("samplers", "preset") else [v.strip()]
        for combo in itertools.product(*alts.values()):
            out.append(dict(zip(alts, combo)))
    return _dedupe(out)


def _dedupe(bodies: list[dict]) -> list[dict]:
    seen, out = set(), []
    for b in bodies:
        key = json.dumps(b, sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            out.append(b)
    return out


def parse_floats(text: str | Sequence[float] | None, name: str = "--temperatures") -> list[float]:
    """``"0.7,1,2"`` -> [0.7, 1.0, 2.0]; each finite and >= 0."""
    if text is None:
        return []
    items = text.split(",") if isinstance(text, str) else list(text)
    out = []
    for x in items:
        if isinstance(x, str) and not x.strip():
            continue
        try:
            v = float(x)
        except (TypeError, ValueError):
            raise TemperanceError(f"{name} must be numbers separated by ',', got {x!r}") from None
        if not math.isfinite(v) or v < 0:
            raise TemperanceError(f"{name} values must be finite and >= 0, got {x!r}")
        out.append(v)
    return out


def family_of(params: SamplingParams) -> str:
    """The sampler family of `params`: its active samplers besides temperature, joined by '+'."""
    if params.temperature == 0:
        return "greedy"
    names = [n for n in ("mirostat",) + SAMPLERS if n != "temperature" and ACTIVE[n](params)]
    if params.dynatemp_range > 0:
        names.append("dynatemp")
    if params.smoothing_factor > 0:
        names.append("smoothing")
    return "+".join(names) or "pure"


def _canonical(body: Mapping[str, Any]) -> dict:
    """The family's own knobs under canonical field names (temperature and order left out)."""
    return {LLAMA_NAMES.get(k, k): v for k, v in body.items()
            if k not in _TEMPERATURE_NAMES and k not in _NOT_KNOBS}


def expand(bodies: Iterable[Mapping[str, Any]], temperatures: Sequence[float] = (),
           samplers: str | Sequence[str] = "temperature-first") -> list[Config]:
    """Configurations: each body crossed with `temperatures` unless it sets its own, validated."""
    order = ORDER_NAMES.get(samplers, samplers) if isinstance(samplers, str) else tuple(samplers)
    temps = list(temperatures) or [1.0]
    out: list[Config] = []
    for body in bodies:
        body = dict(body)
        if "seed" in body:
            raise TemperanceError("a configuration may not set seed: the harness seeds every "
                                  "(prompt, sample) itself, the same in every configuration (--seeds)")
        own = [k for k in _TEMPERATURE_NAMES if k in body]
        if isinstance(body.get("samplers"), str) and body["samplers"] in ORDER_NAMES:
            body["samplers"] = list(ORDER_NAMES[body["samplers"]])
        if "samplers" not in body and "preset" not in body:
            body["samplers"] = list(order)
        for T in ([body[own[0]]] if own else temps):
            b = dict(body)
            if not own:
                b["temperature"] = T
            try:
                params, _ = params_from_request(b)
            except TemperanceError as e:
                raise TemperanceError(f"configuration {_show(body)}: {e}") from None
            out.append(Config(b, params, family_of(params), float(params.temperature), _canonical(b)))
    seen, uniq = set(), []
    for c in out:
        key = json.dumps(c.params.to_dict(), sort_keys=True)
        if key not in seen:
            seen.add(key)
            uniq.append(c)
    return uniq


def _show(body: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{k}={v}" for k, v in body.items() if k != "samplers") + "}"


def load_grid(path: str) -> dict:
    """Read a YAML grid file: the same options as the command line (see docs/eval.md).

    Keys: ``configs`` (a ``--configs`` string, or a list of strings / mappings whose values may be
    lists of alternatives), ``temperatures``, ``samplers``, ``tasks``, ``samples``, ``max_tokens``,
    ``chat``, ``seeds``, ``limit``, ``out``, ``text``, ``positions``, ``window``, ``workers``. Returns the
    options dict, with ``configs`` as a list of request bodies.
    """
    try:
        import yaml
    except ImportError:
        raise TemperanceError("--grid needs PyYAML: pip install 'temperance[eval]'") from None
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise TemperanceError(f"--grid {path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise TemperanceError(f"--grid {path}: the file must be a mapping of options")
    known = {"configs", "temperatures", "samplers", "tasks", "samples", "max_tokens", "chat", "seeds",
             "model", "out", "text", "positions", "window", "workers", "limit", "judge"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise TemperanceError(f"--grid {path}: unknown key(s) {', '.join(unknown)}; known: "
                              f"{', '.join(sorted(known))}")
    cfgs = data.get("configs")
    if isinstance(cfgs, str):
        data["configs"] = parse_configs(cfgs)
    elif isinstance(cfgs, list):
        bodies: list[dict] = []
        for c in cfgs:
            if c is None or c == {}:
                bodies.append({})
            elif isinstance(c, str):
                bodies += parse_configs(c) if c.strip() else [{}]
            elif isinstance(c, dict):
                alts = {k: (v if isinstance(v, list) and k not in ("samplers", "dry_sequence_breakers")
                            else [v]) for k, v in c.items()}
                bodies += [dict(zip(alts, combo)) for combo in itertools.product(*alts.values())]
            else:
                raise TemperanceError(f"--grid {path}: a configuration must be a string or a mapping, got {c!r}")
        data["configs"] = _dedupe(bodies)
    elif cfgs is not None:
        raise TemperanceError(f"--grid {path}: configs must be a string or a list")
    if "temperatures" in data:
        data["temperatures"] = parse_floats(data["temperatures"])
    return data

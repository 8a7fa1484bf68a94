"""One request body (llama.cpp server / OpenAI names) → `SamplingParams` + generation options.

`params_from_request` is the one place a request becomes sampling parameters; the server and the
CLI (`temperance generate`, which builds the same dict from its flags) both call it.

Names follow llama.cpp's server where it has one (``repeat_penalty``, ``repeat_last_n``,
``top_n_sigma``, ``typical_p``, ``dry_*``, ``samplers`` ...); our own field names are accepted as
aliases (``repetition_penalty``, ``penalty_last_n``, ``typical``). ``preset`` names a sampler order
(``llama.cpp``, ``vllm``, ``openai``, ``hf``). ``null`` means "the default". Wrong types and
out-of-range values raise `TemperanceError` whose message names the field as it was sent.

>>> p, o = params_from_request({"temperature": 0.7, "repeat_penalty": 1.1, "max_tokens": 8})
>>> p.repetition_penalty, o.max_tokens
(1.1, 8)
>>> params_from_request({"top_k": "5"})
Traceback (most recent call last):
...
temperance.errors.TemperanceError: top_k must be a number in integers >= 0 (0 = off), got '5'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from .errors import TemperanceError
from .params import FIELDS, PRESETS, SamplingParams

__all__ = ["GenOptions", "params_from_request", "constraint_from_request", "LLAMA_NAMES", "IGNORED",
           "UNSUPPORTED", "STRUCTURED"]

# request name → SamplingParams field: every knob's names as its stage declares them
# (llama.cpp's server names first: repeat_penalty, repeat_last_n, ...; our field names as aliases)
LLAMA_NAMES: dict[str, str] = {n: k.name for k in FIELDS.values() for n in k.request_names}
OTHER_PARAMS = ("samplers", "preset", "seed")
GEN_PARAMS = ("max_tokens", "max_completion_tokens", "n_predict", "min_tokens", "n", "stop",
              "logprobs", "top_logprobs", "n_probs", "stream", "stream_options")
# fields the endpoints read themselves, or accept and ignore (OpenAI client conveniences)
IGNORED = ("model", "prompt", "messages", "user", "echo", "suffix", "best_of", "cache_prompt",
           "parallel_tool_calls", "metadata", "store", "service_tier")
STRUCTURED = ("response_format", "grammar", "json_schema")  # → a constrain.Constraint
UNSUPPORTED = {
    "tools": "tools / function calling is not supported", "tool_choice": "tool_choice is not supported",
    "functions": "functions is not supported",
}


@dataclass(frozen=True)
class GenOptions:
    """What a request asks of the decoding loop besides sampling."""

    max_tokens: int = 16
    min_tokens: int = 0
    n: int = 1
    stop: tuple[str, ...] = ()
    logprobs: bool = False       # report each token's logprob
    top_logprobs: int = 0        # and the top-k alternatives
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage
    constraint: Any = None       # a constrain.Constraint (response_format, grammar, json_schema)


def _int(name: str, v: Any, lo: int, hi: int | None = None) -> int:
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise TemperanceError(f"{name} must be an integer, got {v!r}")
    if v < lo or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise TemperanceError(f"{name} must be an integer {rng}, got {v}")
    return v


_F32_MAX = 3.4028234663852886e38


def _float32(name: str, v: Any) -> None:
    """Knobs run in float32: a finite value beyond its range (1e308) would overflow there."""
    vals = v.values() if isinstance(v, Mapping) else [v]
    for x in vals:
        if isinstance(x, float) and x == x and abs(x) != float("inf") and abs(x) > _F32_MAX:
            raise TemperanceError(f"{name} must be within float32's range (|value| <= 3.4e38), got {x!r}")


def params_from_request(body: Mapping[str, Any], *, defaults: GenOptions = GenOptions()
                        ) -> tuple[SamplingParams, GenOptions]:
    """Validate one request body; return `(SamplingParams, GenOptions)`. Raises TemperanceError."""
    if not isinstance(body, Mapping):
        raise TemperanceError(f"the request body must be a JSON object, got {type(body).__name__}")
    for k in body:
        if k in UNSUPPORTED and body[k] is not None:
            raise TemperanceError(UNSUPPORTED[k])
    known = (set(LLAMA_NAMES) | set(OTHER_PARAMS) | set(GEN_PARAMS) | set(IGNORED) | set(UNSUPPORTED)
             | set(STRUCTURED))
    unknown = sorted(k for k in body if k not in known)
    if unknown:
        raise TemperanceError(f"unknown field(s) {', '.join(map(repr, unknown))}; sampling fields: "
                              f"{', '.join(sorted(LLAMA_NAMES))}, {', '.join(OTHER_PARAMS)}")
    kw: dict[str, Any] = {}
    sent_as: dict[str, str] = {}
    for name, field in LLAMA_NAMES.items():
        v = body.get(name)
        if v is None:
            continue
        if field in kw:
            raise TemperanceError(f"{name} and {sent_as[field]} are the same parameter; give one")
        knob = FIELDS[field]
        try:
            kw[field] = knob.from_json(v) if knob.from_json else knob.check(v)
        except TemperanceError as e:
            msg = str(e)
            raise TemperanceError(name + msg[len(field):] if msg.startswith(field) else msg) from None
        sent_as[field] = name
        _float32(name, kw[field])
    samplers, preset = body.get("samplers"), body.get("preset")
    if samplers is not None and preset is not None:
        raise TemperanceError("give samplers or preset, not both")
    if preset is not None:
        if not isinstance(preset, str) or preset.strip().lower() not in PRESETS:
            raise TemperanceError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
        kw["samplers"] = preset.strip().lower()
    elif samplers is not None:
        if not isinstance(samplers, (str, list)):
            raise TemperanceError(f"samplers must be a list of names or a string, got {samplers!r}")
        kw["samplers"] = samplers
    seed = body.get("seed")
    if seed is not None and seed != -1:  # llama.cpp: -1 = random
        kw["seed"] = _int("seed", seed, 0, 2**63 - 1)
    params = SamplingParams(**kw)

    # -- generation options ---------------------------------------------------------------------
    o: dict[str, Any] = {}
    mt = [k for k in ("max_tokens", "max_completion_tokens", "n_predict") if body.get(k) is not None]
    if len(mt) > 1:
        raise TemperanceError(f"give one of {', '.join(mt)}")
    if mt:
        o["max_tokens"] = _int(mt[0], body[mt[0]], 1)
    if body.get("min_tokens") is not None:
        o["min_tokens"] = _int("min_tokens", body["min_tokens"], 0)
    if body.get("n") is not None:
        o["n"] = _int("n", body["n"], 1)
    stop = body.get("stop")
    if stop is not None:
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
            raise TemperanceError(f"stop must be a non-empty string or a list of them, got {body['stop']!r}")
        o["stop"] = tuple(stop)
    lp, top = body.get("logprobs"), body.get("top_logprobs")
    if lp is not None:  # chat: bool; completions: int = number of alternatives
        if isinstance(lp, bool):
            o["logprobs"] = lp
        else:
            o["logprobs"], o["top_logprobs"] = True, _int("logprobs", lp, 0, 20)
    if body.get("n_probs") is not None:  # llama.cpp
        o["logprobs"], o["top_logprobs"] = True, _int("n_probs", body["n_probs"], 0, 20)
    if top is not None:
        o["top_logprobs"] = _int("top_logprobs", top, 0, 20)
        if not o.get("logprobs"):
            raise TemperanceError("top_logprobs needs logprobs: true")
    st = body.get("stream")
    if st is not None:
        if not isinstance(st, bool):
            raise TemperanceError(f"stream must be true or false, got {st!r}")
        o["stream"] = st
    so = body.get("stream_options")
    if so is not None:
        if not isinstance(so, Mapping):
            raise TemperanceError(f"stream_options must be an object, got {so!r}")
        o["include_usage"] = bool(so.get("include_usage"))
    c = constraint_from_request(body)
    if c is not None:
        o["constraint"] = c
    base = {f: getattr(defaults, f) for f in GenOptions.__dataclass_fields__}
    base.update(o)
    return params, GenOptions(**base)


def constraint_from_request(body: Mapping[str, Any]) -> Any:
    """Structured output as a `constrain.Constraint` (the CLI's constraint code), or None.

    OpenAI's ``response_format``: ``{"type": "text"}`` (none), ``{"type": "json_object"}`` (any
    JSON object), ``{"type": "json_schema", "json_schema": {"schema": {...}}}``; llama.cpp's
    ``grammar`` (GBNF text) and ``json_schema`` (a schema object). At most one of them.
    """
    given = [k for k in STRUCTURED if body.get(k) is not None]
    if len(given) > 1:
        raise TemperanceError(f"give one of {' and '.join(given)}, not both")
    if not given:
        return None
    from . import constrain

    k, v = given[0], body[given[0]]
    if k == "grammar":
        if not isinstance(v, str) or not v.strip():
            raise TemperanceError(f"grammar must be a non-empty GBNF string, got {v!r}")
        return constrain.grammar(v)
    if k == "json_schema":
        if not isinstance(v, Mapping):
            raise TemperanceError(f"json_schema must be a JSON schema object, got {v!r}")
        return constrain.json_schema(dict(v))
    if not isinstance(v, Mapping) or v.get("type") not in ("text", "json_object", "json_schema"):
        raise TemperanceError("response_format must be {\"type\": \"text\" | \"json_object\" | "
                              f"\"json_schema\", ...}}, got {v!r}")
    if v["type"] == "text":
        return None
    if v["type"] == "json_object":
        return constrain.json_schema({"type": "object"})
    js = v.get("json_schema")
    if not isinstance(js, Mapping) or not isinstance(js.get("schema"), Mapping):
        raise TemperanceError("response_format.json_schema must be an object with a \"schema\" object")
    return constrain.json_schema(dict(js["schema"]))

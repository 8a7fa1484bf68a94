"""Logit bias: add a per-token constant; ``-inf`` bans the token.

``logit_bias`` (neutral ``{}``) maps token id → bias, one mapping for every row or a list of
mappings (one per row). As OpenAI's ``logit_bias``; a positive bias can raise a logit.

>>> import torch
>>> logit_bias(torch.zeros(1, 4), logit_bias={1: 2.5, 3: float("-inf")})
tensor([[0.0000, 2.5000, 0.0000,   -inf]])
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from ..errors import TemperanceError
from ..stage import Knob, Stage
from ._common import check_logits, check_not_empty


def pack(biases: Sequence[Mapping[int, float]], vocab_size: int, device=None) -> tuple[Tensor, Tensor]:
    """Per-row bias mappings → ``ids [B, M]``, ``values [B, M]`` (padding: id 0, value 0)."""
    M = max((len(b) for b in biases), default=0)
    ids = torch.zeros(len(biases), M, dtype=torch.int64)
    vals = torch.zeros(len(biases), M, dtype=torch.float32)
    for i, b in enumerate(biases):
        for j, (tok, v) in enumerate(b.items()):
            if tok >= vocab_size:
                raise TemperanceError(
                    f"logit_bias token id {tok} is out of range for a vocabulary of {vocab_size}")
            ids[i, j], vals[i, j] = tok, v
    return ids.to(device), vals.to(device)


def _logit_bias_(x: Tensor, ids: Tensor, values: Tensor) -> Tensor:
    if ids.numel():
        # accumulate=True: padding entries (id 0, +0.0) may repeat a real id and must add, not overwrite
        rows = torch.arange(x.shape[0], device=x.device).view(-1, 1).expand_as(ids)
        x.index_put_((rows, ids), values.to(x.dtype), accumulate=True)
    return x


def logit_bias(logits: Tensor, *, logit_bias) -> Tensor:
    """Add ``logit_bias`` (a mapping, or one mapping per row) to the logits."""
    check_logits(logits)
    B, V = logits.shape
    biases = [logit_bias] * B if isinstance(logit_bias, Mapping) else list(logit_bias)
    if len(biases) != B:
        raise TemperanceError(f"logit_bias must be one mapping or {B} (one per row), got {len(biases)}")
    ids, vals = pack([check_bias(b) for b in biases], V, logits.device)
    return _logit_bias_(logits.clone(), ids, vals)


def check_bias(bias: Any) -> dict[int, float]:
    """A logit-bias mapping, validated: token id (int >= 0) -> finite bias or ``-inf`` (ban)."""
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


def from_json(v: Any) -> Any:
    """A request's form: OpenAI's ``{"id": bias}`` or llama.cpp's ``[[id, bias], ...]``; a bias of
    ``false`` bans the token (llama.cpp)."""
    if isinstance(v, list):
        out = {}
        for item in v:
            if not (isinstance(item, list) and len(item) == 2):
                raise TemperanceError(f"logit_bias as a list must hold [token_id, bias] pairs, got {item!r}")
            out[item[0]] = item[1]
        v = out
    if not isinstance(v, Mapping):
        raise TemperanceError(f"logit_bias must be an object {{token_id: bias}}, got {v!r}")
    return check_bias({k: (-math.inf if b is False else b) for k, b in v.items()})


def parse_flags(items: list[str]) -> dict[int, float]:
    """The CLI's repeatable ``--logit-bias ID+BIAS`` / ``ID-BIAS`` (``15043-inf`` bans)."""
    out = {}
    for text in items:
        for i, ch in enumerate(text[1:], 1):
            if ch in "+-":
                try:
                    out[int(text[:i])] = float(text[i:])
                    break
                except ValueError:
                    pass
        else:
            raise TemperanceError(f"--logit-bias must look like TOKEN_ID+BIAS or TOKEN_ID-BIAS, got {text!r}")
    return out


def _stage_(x: Tensor, batch) -> Tensor:
    x = _logit_bias_(x, *batch.logit_bias(x.shape[1]))
    if any(v == float("-inf") for p in batch.params for v in p.logit_bias.values()):
        check_not_empty(x, "logit_bias banned every token")
    return x


STAGE = Stage(
    "logit_bias", apply=_stage_, reads_ids=True, aliases=("bias",), paper="OpenAI API",
    summary="add a per-token constant; -inf bans",
    active=lambda p: bool(p.logit_bias),
    knobs=(Knob("logit_bias", {}, None, "{token id: finite bias or -inf}",
                "add a per-token constant to the logits; -inf bans the token",
                flag=("--logit-bias", "-l"), check_value=check_bias, from_json=from_json,
                parse_flag=parse_flags),))

"""Logit bias: add a per-token constant; ``-inf`` bans the token.

``logit_bias`` (neutral ``{}``) maps token id → bias, one mapping for every row or a list of
mappings (one per row). As OpenAI's ``logit_bias``; a positive bias can raise a logit. The sum is
taken in float64 and saturates at the dtype's largest finite value (a bias never makes +inf); a
masked token stays masked whatever its bias.

The mappings are packed once (`pack`: ids and values as ``[B, M]`` tensors, one Python pass per
*distinct* mapping); a batch keeps the packed tensors and indexes them when its rows change.

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
from ._common import LIMIT, check_logits, check_not_empty, fit


def pack(biases: Sequence[Mapping[int, float]], vocab_size: int, device=None) -> tuple[Tensor, Tensor]:
    """Per-row bias mappings → ``ids [B, M]``, ``values [B, M]`` (float64).

    A row with fewer than M entries repeats its first entry (the same write twice); a row with none
    is padded with token 0 and bias 0 (a no-op).
    """
    M = max((len(b) for b in biases), default=0)
    packed: dict[int, tuple[Tensor, Tensor]] = {}  # id(mapping) -> its row, so n copies pack once
    rows = []
    for b in biases:
        if id(b) not in packed:
            ids = torch.tensor(list(b.keys()) or [0], dtype=torch.int64)
            vals = torch.tensor(list(b.values()) or [0.0], dtype=torch.float64)
            if b and int(ids.max()) >= vocab_size:
                raise TemperanceError(f"logit_bias token id {int(ids.max())} is out of range for a "
                                      f"vocabulary of {vocab_size}")
            pad = M - ids.numel()
            packed[id(b)] = (torch.cat([ids, ids[:1].expand(pad)]), torch.cat([vals, vals[:1].expand(pad)]))
        rows.append(packed[id(b)])
    if not rows or M == 0:
        B = len(biases)
        return (torch.zeros(B, 0, dtype=torch.int64, device=device),
                torch.zeros(B, 0, dtype=torch.float64, device=device))
    return torch.stack([r[0] for r in rows]).to(device), torch.stack([r[1] for r in rows]).to(device)


def _logit_bias_(x: Tensor, ids: Tensor, values: Tensor) -> Tensor:
    if ids.numel():
        old = x.gather(1, ids)
        new = torch.where(torch.isfinite(old), fit(old.double() + values.to(old.device), x.dtype), old)
        x.scatter_(1, ids, new)  # repeated ids (padding) write the same value
    return x


def logit_bias(logits: Tensor, *, logit_bias) -> Tensor:
    """Add ``logit_bias`` (a mapping, or one mapping per row) to the logits."""
    check_logits(logits)
    B, V = logits.shape
    if isinstance(logit_bias, Mapping):
        biases = [logit_bias] * B
    elif isinstance(logit_bias, (list, tuple)):
        biases = list(logit_bias)
    else:
        raise TemperanceError(f"logit_bias must be a mapping token id -> bias, or a list of {B} "
                              f"(one per row), got {logit_bias!r}")
    if len(biases) != B:
        raise TemperanceError(f"logit_bias must be one mapping or {B} (one per row), got {len(biases)}")
    checked: dict[int, dict] = {}
    for b in biases:
        if id(b) not in checked:
            checked[id(b)] = check_bias(b)
    biases = [checked[id(b)] for b in biases]
    ids, vals = pack(biases, V, logits.device)
    return _logit_bias_(logits.clone(), ids, vals)


MAX_ENTRIES = 1 << 18  # 262,144: every token of the largest vocabulary we ship


def check_bias(bias: Any) -> dict[int, float]:
    """A logit-bias mapping, validated: at most ``MAX_ENTRIES`` token ids (int >= 0) -> a bias in
    [-1e30, 1e30] or ``-inf`` (ban)."""
    if not isinstance(bias, Mapping):
        raise TemperanceError(f"logit_bias must be a mapping token id -> bias, got {bias!r}")
    if len(bias) > MAX_ENTRIES:
        raise TemperanceError(f"logit_bias must have at most {MAX_ENTRIES} entries, got {len(bias)}")
    out = {}
    for k, v in bias.items():
        try:
            tok = int(k)
        except (TypeError, ValueError):
            raise TemperanceError(f"logit_bias keys must be token ids (integers >= 0), got {k!r}")
        if tok < 0 or (isinstance(k, float) and not k.is_integer()):
            raise TemperanceError(f"logit_bias keys must be token ids (integers >= 0), got {k!r}")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (
                -LIMIT <= v <= LIMIT or v == -math.inf):
            raise TemperanceError(
                f"logit_bias[{tok}] must be in [-1e30, 1e30] or -inf (ban), got {v!r}")
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
    if batch.bias_bans:
        check_not_empty(x, "logit_bias banned every token")
    return x


STAGE = Stage(
    "logit_bias", apply=_stage_, reads_ids=True, aliases=("bias",), paper="OpenAI API",
    summary="add a per-token constant; -inf bans",
    active=lambda p: bool(p.logit_bias),
    knobs=(Knob("logit_bias", {}, None, "{token id: bias in [-1e30, 1e30] or -inf}, at most 2^18 entries",
                "add a per-token constant to the logits; -inf bans the token",
                flag=("--logit-bias", "-l"), check_value=check_bias, from_json=from_json,
                parse_flag=parse_flags),))

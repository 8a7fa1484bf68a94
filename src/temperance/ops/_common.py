"""Shared plumbing for the ops: knob columns and history tensors.

Every op takes dense logits ``[B, V]`` first. A knob is a Python scalar (same for every row) or a
``[B]`` tensor. The public op validates, copies and calls the in-place kernel ``_name_``; the chain
calls the kernels directly on its own working tensor (which it owns, so writing in place is safe).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import TemperanceError

NEG_INF = float("-inf")
# The end of every otherwise unbounded knob's range, "1e30" (as float32 rounds it, so that a knob
# that went through a float32 [B] tensor is still in range): past it each knob has long reached its
# limit, a float32 per-row knob stays finite, and the float64 kernels cannot overflow.
LIMIT = float(torch.tensor(1e30, dtype=torch.float32))


def check_logits(logits: Tensor) -> None:
    """A floating-point ``[B, V]`` tensor whose rows are legal (see `check_rows`)."""
    if not isinstance(logits, Tensor) or logits.dim() != 2 or not logits.is_floating_point():
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise TemperanceError(f"logits must be a floating-point [B, V] tensor, got {shape}")
    if logits.shape[1] == 0:
        raise TemperanceError("logits must have at least one column (V >= 1)")
    check_rows(logits)


def check_rows(x: Tensor, where: str = "logits") -> None:
    """Raise if a row holds NaN or +inf, or no finite entry at all (naming the row)."""
    m = x.amax(-1)
    if bool(torch.isfinite(m).all()):  # amax propagates NaN, so one pass checks all three
        return
    for i in range(x.shape[0]):
        row = x[i]
        if bool(torch.isnan(row).any()):
            raise TemperanceError(f"row {i} of {where} contains NaN")
        if bool((row == float("inf")).any()):
            raise TemperanceError(f"row {i} of {where} contains +inf")
        if not bool(torch.isfinite(row).any()):
            raise TemperanceError(f"row {i} of {where} has no finite logit (every token is masked)")


def fit(y: Tensor, dtype: torch.dtype) -> Tensor:
    """``y`` (computed in a wider dtype) as ``dtype``, saturating: a finite value beyond ``dtype``'s
    range becomes its largest finite value (a shaped logit stays a logit, it is not masked);
    ``-inf`` stays ``-inf``."""
    fmax = torch.finfo(dtype).max
    return torch.where(y == NEG_INF, y, y.clamp(-fmax, fmax)).to(dtype)


def knob(name: str, value, logits: Tensor) -> float | Tensor:
    """Validate a knob given to a public op; return a float/int or a ``[B]`` tensor."""
    if isinstance(value, Tensor):
        B = logits.shape[0]
        if value.dim() != 1 or value.shape[0] != B:
            raise TemperanceError(f"{name} must be a scalar or a [B] tensor with B={B}, "
                                  f"got shape {tuple(value.shape)}")
        for v in set(value.tolist()):  # host check: this is the public, validating entry point
            _knob(name).check(v)
        return value
    return _knob(name).check(value)


def _knob(name: str):
    from . import KNOBS  # the registry is built from the op modules, after this one is loaded

    return KNOBS[name]


def col(value, x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """A knob as a ``[B, 1]`` column on x's device (scalars broadcast)."""
    dtype = dtype or x.dtype
    if isinstance(value, Tensor):
        return value.to(device=x.device, dtype=dtype).view(-1, 1)
    if dtype.is_floating_point and dtype != torch.float64:  # (a value past dtype's range: ±inf)
        return torch.full((x.shape[0], 1), value, dtype=torch.float64, device=x.device).to(dtype)
    return torch.full((x.shape[0], 1), value, dtype=dtype, device=x.device)


def is_neutral(name: str, value) -> bool:
    """Host-side: is a scalar knob at its neutral value (so the op may return at once)?"""
    return not isinstance(value, Tensor) and value == _knob(name).neutral


def check_not_empty(x: Tensor, why: str) -> None:
    """Raise if a row has no finite logit left, naming the first such row and the reason."""
    empty = ~torch.isfinite(x.amax(-1))
    if bool(empty.any()):
        rows = empty.nonzero().view(-1).tolist()
        raise TemperanceError(f"row {rows[0]} has no token left: {why}")


def check_history(h: Tensor, vocab_size: int) -> Tensor:
    """Reject token ids the vocabulary does not have."""
    if h.numel() and int(h.max()) >= vocab_size:
        raise TemperanceError(f"history token id {int(h.max())} is out of range for a vocabulary "
                              f"of {vocab_size}")
    return h


def as_history(history, B: int, device: torch.device) -> Tensor:
    """Token history as a ``[B, L]`` int64 tensor, right-aligned (newest token last), -1 padded.

    Accepts a list of token-id lists (one per row) or a ``[B, L]`` tensor padded with -1 on the
    left. A tensor padded on the right (real tokens after -1) is rejected: the newest token must be
    in the last column, because windows ("the last n tokens") are taken from the right.
    """
    if isinstance(history, Tensor):
        if history.dim() != 2 or history.shape[0] != B:
            raise TemperanceError(f"history must be [B, L] with B={B}, got {tuple(history.shape)}")
        h = history.to(device=device, dtype=torch.int64)
        seen = (h >= 0).to(torch.int8).cummax(dim=1).values.bool()
        if bool((seen & (h < 0)).any()):
            raise TemperanceError("history tensor must be padded with -1 on the left only "
                                  "(newest token in the last column)")
        return h
    if len(history) != B:
        raise TemperanceError(f"history must have one token list per row (B={B}), got {len(history)}")
    L = max((len(r) for r in history), default=0)
    h = torch.full((B, L), -1, dtype=torch.int64)
    for i, row in enumerate(history):
        if len(row):
            h[i, L - len(row):] = torch.as_tensor(list(row), dtype=torch.int64)
    if bool((h < -1).any()):
        raise TemperanceError("history token ids must be >= 0")
    return h.to(device)


def compact(x: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
    """The entries of ``x`` ``[B, W]`` where ``keep``, packed to the left of ``[B, K]`` rows.

    Returns the values (``-inf`` padding) and their positions in ``x`` (padding: ``W``), in
    position order, with K the largest count of any row (at least 1). One nonzero, no sort; large
    inputs go in blocks of rows so that the temporaries stay small (fresh big allocations are slow).
    """
    B, W = x.shape
    step = max(1, (1 << 19) // max(W, 1))
    if B > step:
        parts = [compact(x[i:i + step], keep[i:i + step]) for i in range(0, B, step)]
        K = max(v.shape[1] for v, _ in parts)
        return (torch.cat([F.pad(v, (0, K - v.shape[1]), value=NEG_INF) for v, _ in parts]),
                torch.cat([F.pad(p, (0, K - p.shape[1]), value=W) for _, p in parts]))
    flat = keep.reshape(-1).nonzero().view(-1)  # row-major: ascending positions within a row
    rows = flat // W
    counts = torch.bincount(rows, minlength=B)
    K = max(int(counts.max()) if B else 0, 1)
    dest = rows * K + torch.arange(flat.numel(), device=x.device) - (counts.cumsum(0) - counts)[rows]
    vals = x.new_full((B, K), NEG_INF)
    vals.view(-1).index_copy_(0, dest, x.reshape(-1).index_select(0, flat))
    pos = torch.full((B, K), W, dtype=torch.int64, device=x.device)
    pos.view(-1).index_copy_(0, dest, flat - rows * W)
    return vals, pos


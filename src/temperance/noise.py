"""Counter-based random numbers: the noise for a row depends only on (seed, step, token id).

Why not `torch.Generator`: a generator's stream depends on how many numbers were drawn before, so a
row's draw would depend on its batch (who else is there, how many candidates each row had). Here
every random number is a hash of its coordinates (SplitMix64's finaliser, applied three times), so
a seeded request yields the same tokens alone or inside any batch, on the same device and dtype.

Uniforms carry 53 random bits and are computed in float64, so a far-tail token keeps its
probability (float32 ``Exp(1)`` noise never goes below 2^-24 and silently drops such tokens).

>>> import torch
>>> u = uniform(torch.tensor([7]), torch.tensor([0]), torch.tensor([[0, 1, 2]]))
>>> bool(((u > 0) & (u < 1)).all()), u.dtype
(True, torch.float64)
"""

from __future__ import annotations

import torch
from torch import Tensor

from .ops import _native

_M1 = 0xBF58476D1CE4E5B9 - 2**64  # SplitMix64 constants, as signed int64 (torch has no uint64 math)
_M2 = 0x94D049BB133111EB - 2**64
_GOLDEN = 0x9E3779B97F4A7C15 - 2**64

SALT_PICK = 0
SALT_XTC = 1


def _wrap(v: int) -> int:
    """A Python int reduced to the signed int64 with the same bits (mod 2^64)."""
    v %= 2**64
    return v - 2**64 if v >= 2**63 else v


def _shr(z: Tensor, s: int) -> Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic on signed integers)."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def _mix(z: Tensor) -> Tensor:
    z = (z ^ _shr(z, 30)) * _M1  # int64 multiplication wraps modulo 2^64
    z = (z ^ _shr(z, 27)) * _M2
    return z ^ _shr(z, 31)


def _mix_(z: Tensor, tmp: Tensor) -> Tensor:
    """`_mix` in place (``tmp``: scratch of z's shape): no [B, K] allocation per operation."""
    for shift, mult in ((30, _M1), (27, _M2), (31, None)):
        torch.bitwise_right_shift(z, shift, out=tmp).bitwise_and_((1 << (64 - shift)) - 1)
        z.bitwise_xor_(tmp)
        if mult is not None:
            z.mul_(mult)
    return z


def uniform(seed: Tensor, step: Tensor, index: Tensor, salt: int = SALT_PICK) -> Tensor:
    """Uniforms in (0, 1), float64, shaped like ``index`` ``[B, K]``; seed and step are ``[B]``.
    On CPU the native kernel computes the same bits in one pass (`_torch_uniform` is the reference)."""
    if index.device.type == "cpu" and index.dim() == 2 and _native.lib() is not None:
        B = max(seed.numel(), step.numel(), index.shape[0])
        if {seed.numel(), step.numel(), index.shape[0]} <= {1, B}:  # (else: torch says why not)
            as64 = lambda t: t.reshape(-1).to(torch.int64).expand(B)  # noqa: E731
            return _native.uniform(as64(seed), as64(step), index.to(torch.int64).expand(B, -1), salt)
    return _torch_uniform(seed, step, index, salt)


def _torch_uniform(seed: Tensor, step: Tensor, index: Tensor, salt: int = SALT_PICK) -> Tensor:
    h = _mix(seed.view(-1, 1).to(torch.int64) + _wrap(0x9E3779B97F4A7C15 * (salt + 1)))
    h = _mix(h + step.view(-1, 1).to(torch.int64) * _GOLDEN)           # [B, 1]: one per row
    z = index.to(torch.int64) + h                                      # [B, K]: the big part,
    _mix_(z, torch.empty_like(z))                                      # done in place
    z.bitwise_right_shift_(11).bitwise_and_((1 << 53) - 1)
    return z.to(torch.float64).add_(0.5).mul_(2.0**-53)


def gumbel(seed: Tensor, step: Tensor, index: Tensor) -> Tensor:
    """Standard Gumbel noise: argmax(logits + gumbel) is a draw from softmax(logits)."""
    return uniform(seed, step, index).log_().neg_().log_().neg_()


def gumbel_scores(seed: Tensor, step: Tensor, index: Tensor, logits: Tensor) -> Tensor:
    """``logits + gumbel(seed, step, index)`` in float64, bit for bit, in fewer passes
    (``l - log(-log u)`` is ``l + (-log(-log u))`` exactly)."""
    return torch.sub(logits, uniform(seed, step, index).log_().neg_().log_())


def coin(seed: Tensor, step: Tensor, salt: int) -> Tensor:
    """One uniform per row, ``[B]``, independent of the pick noise (a different salt)."""
    return uniform(seed, step, torch.zeros(seed.shape[0], 1, dtype=torch.int64, device=seed.device),
                   salt).view(-1)


def reference_uniform(seed: int, step: int, index: int, salt: int = SALT_PICK) -> float:
    """Pure-Python twin of `uniform` (mod 2^64 arithmetic); tests pin the tensor code to it."""
    mask = 2**64 - 1

    def mix(z: int) -> int:
        z &= mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    g = 0x9E3779B97F4A7C15
    h = mix(seed + g * (salt + 1))
    h = mix(h + step * g)
    h = mix(h + index)
    return ((h >> 11) + 0.5) * 2.0**-53

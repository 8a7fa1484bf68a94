"""Locally typical sampling: keep the tokens whose surprise is closest to the expected surprise.

``typical_p`` τ (neutral 1.0 = off), in (0, 1]. With H the entropy, score each token by
``|−ln p_i − H|``; sort ascending (stable: ties by token id) and keep the shortest prefix whose mass
reaches τ (inclusive, as transformers; "reaches" within float32 rounding of τ, the rule top-p uses).
The most likely token can be dropped. (Meister et al. 2022, "Locally Typical Sampling", TACL 2023.)

The score is computed exactly in float64 and without a log per token: ``−ln p_i − H = E_p[l] − l_i``,
so it is the distance of each logit from the mean logit under p, ``|l_i − c|``; the cut is the mass
cut of `temperance.ops._cut` on that key (no sort of the vocabulary).

>>> import torch
>>> p = torch.tensor([[0.4, 0.2, 0.2, 0.2]])
>>> (typical_p(p.log(), typical_p=0.5) > float("-inf")).tolist()
[[False, True, True, True]]
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..stage import Knob, Stage
from . import _native
from ._common import NEG_INF, check_logits, col, is_neutral, knob
from ._cut import SPAN, goal, kept, prefix_cut


def _cut_torch(x: Tensor, g: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(key, kstar, q)`` for rows ``x`` in float64 (pure torch, the reference)."""
    m = x.amax(-1, keepdim=True).double()
    d = x.double() - m
    w = d.exp()
    z = w.sum(-1, keepdim=True)
    c = m + (w * d).nan_to_num_(0.0, neginf=0.0).sum(-1, keepdim=True) / z  # E_p[l]; -inf rows: nan
    key = (x.double() - c).abs()  # +inf for -inf logits: absent
    kstar, q = prefix_cut(key, w, g * z, span=(m - c) + SPAN)
    return key, kstar, q


def _keep(x: Tensor, g: Tensor) -> Tensor:
    rows = max(1, (1 << 20) // max(x.shape[1], 1))  # row blocks: float64 temporaries stay small
    return torch.cat([kept(*_cut_torch(x[i:i + rows], g[i:i + rows])) for i in range(0, x.shape[0], rows)])


def _typical_p_(x: Tensor, typical_p) -> Tensor:
    """Typical sampling on ``x`` in place (x is the caller's own working tensor)."""
    r = _native.cut(x, 1, typical_p) if _native.usable(x) else None
    if r is not None:
        kstar, center, q, _, _ = r
        return _native.dense(x, 1, kstar, center, q, out=x)
    return x.masked_fill_(~_keep(x, goal(col(typical_p, x, torch.float32))), NEG_INF)


def candidates(x: Tensor, typical_p):
    """The typical set of dense ``x`` as `Candidates`."""
    from ..candidates import Candidates  # candidates imports ops: keep the import edge one-way

    r = _native.cut(x, 1, typical_p) if _native.usable(x) else None
    if r is not None:
        kstar, center, q, _, K = r
        return Candidates(*_native.survivors(x, 1, kstar, center, q, K), x.shape[1])
    return Candidates.where(x, _keep(x, goal(col(typical_p, x, torch.float32))))


def typical_p(logits: Tensor, *, typical_p=1.0) -> Tensor:
    """Keep the locally typical set of mass ``typical_p``."""
    check_logits(logits)
    typical_p = knob("typical_p", typical_p, logits)
    if is_neutral("typical_p", typical_p):
        return logits.clone()
    x = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
    if _native.usable(x):
        r = _native.cut(x, 1, typical_p)
        if r is not None:
            kstar, center, q, _, _ = r
            return _native.dense(x, 1, kstar, center, q).to(logits.dtype)
    return _typical_p_(x.clone() if x is logits else x, typical_p).to(logits.dtype)


STAGE = Stage(
    "typical_p", apply=lambda x, batch: _typical_p_(x, batch.knob("typical_p")),
    compact=lambda x, batch: candidates(x, batch.knob("typical_p")),
    aliases=("typical", "typ_p"), paper="Meister et al. 2022, Locally Typical Sampling",
    summary="keep the locally typical set of mass p",
    active=lambda p: p.typical_p < 1,
    knobs=(Knob("typical_p", 1.0, lambda x: 0 < x <= 1, "(0, 1] (1 = off)",
                "keep tokens whose surprise is closest to the entropy, up to mass p",
                flag="--typical", request=("typical_p", "typical")),))

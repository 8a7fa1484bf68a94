"""Eta sampling: an entropy-dependent epsilon.

``eta_cutoff`` ε (neutral 0 = off), in [0, 1): keep ``p_i >= η`` with ``η = min(ε, √ε · e^(−H))``
and H the entropy in nats; the most likely token is always kept. Flat distributions (high H) are
truncated less. (Hewitt, Manning, Liang 2022; the code's √ε·exp(−H), not the docstring's √(ε·e^−H).)

>>> import torch
>>> p = torch.tensor([[0.5, 0.3, 0.15, 0.04, 0.01]])
>>> (eta(p.log(), eta_cutoff=0.02) > float("-inf")).tolist()
[[True, True, True, True, False]]
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..stage import Knob, Stage
from ._common import check_logits, col, is_neutral, knob
from .epsilon import cutoff_


def _eta_(x: Tensor, eta_cutoff) -> Tensor:
    eps = col(eta_cutoff, x)
    logp = torch.log_softmax(x, dim=-1)
    p = logp.exp()
    H = -torch.where(p > 0, p * logp, 0.0).sum(-1, keepdim=True)
    return cutoff_(x, p, torch.minimum(eps, eps.sqrt() * torch.exp(-H)))


def eta(logits: Tensor, *, eta_cutoff=0.0) -> Tensor:
    """Mask tokens with probability below ``min(ε, √ε·e^−H)``."""
    check_logits(logits)
    eta_cutoff = knob("eta_cutoff", eta_cutoff, logits)
    x = logits.clone()
    return x if is_neutral("eta_cutoff", eta_cutoff) else _eta_(x, eta_cutoff)


STAGE = Stage(
    "eta", apply=lambda x, batch: _eta_(x, batch.knob("eta_cutoff")),
    aliases=("eta_cutoff",), paper="Hewitt et al. 2022, Truncation Sampling as Language Model Desmoothing",
    summary="keep p >= min(eta, sqrt(eta)·exp(-H))", active=lambda p: p.eta_cutoff > 0,
    knobs=(Knob("eta_cutoff", 0.0, lambda x: 0 <= x < 1, "[0, 1) (0 = off)",
                "entropy-adaptive cutoff: keep p >= min(eta, sqrt(eta)·exp(-H))", flag="--eta-cutoff"),))

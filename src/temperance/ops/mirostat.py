"""Mirostat v1 and v2: truncation that steers the surprise of the text towards a target.

State: ``mu`` per row (starts at ``2·mirostat_tau``). ``mirostat_tau`` τ (5.0) is the target surprise
in bits per token, ``mirostat_eta`` η (0.1) the learning rate. Each step truncates with ``mu``, the
draw picks x, then ``mu ← mu − η·(S − τ)`` with ``S = −log2 q(x)`` under the truncated, renormalised
distribution (llama.cpp). The update runs in float64 and keeps ``mu`` within ±1e30, so the state
stays finite whatever the knobs (τ, η ≤ 1e30); the chosen token's logprob must be finite. When on,
mirostat replaces truncation: only logit_bias, penalties and temperature run before it. (Basu et al. 2021, "Mirostat: A Neural Text Decoding Algorithm that
Directly Controls Perplexity", ICLR 2021.)

* v1 (``mirostat=1``): estimate the Zipf exponent ŝ from the top m = 100 probabilities
  (least squares of ``ln(p_i/p_{i+1})`` on ``ln((i+2)/(i+1))``), then keep the top
  ``k = ((ε̂·2^mu) / (1 − N^−ε̂))^(1/ŝ)`` tokens, ε̂ = ŝ − 1, N the vocabulary size (floor, >= 1).
* v2 (``mirostat=2``): keep the tokens whose surprise ``−log2 p`` is at most ``mu`` (at least one).

>>> import torch
>>> p = torch.tensor([[0.5, 0.3, 0.15, 0.04, 0.01]])
>>> (mirostat(p.log(), mu=torch.tensor([6.0]), mirostat=2) > float("-inf")).tolist()
[[True, True, True, True, False]]
>>> mirostat_update(torch.tensor([6.0]), torch.tensor([-0.5]), mirostat_tau=3.0, mirostat_eta=0.1)
tensor([6.2279])
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import TemperanceError
from ..stage import Knob, Stage
from ._common import LIMIT, NEG_INF, check_logits, col, knob
from ._topk import chunked_topk
from .top_k import _top_k_

M = 100  # tokens used to estimate the Zipf exponent (paper and llama.cpp)


def _v1_k(x: Tensor, mu: Tensor, vocab_size: int) -> Tensor:
    """Mirostat v1's top-k size per row ``[B, 1]``."""
    m = min(M, x.shape[1])
    v, _ = chunked_topk(x, m)
    logp = v.double() - torch.logsumexp(x.double(), dim=-1, keepdim=True)
    i = torch.arange(m - 1, device=x.device, dtype=torch.float64)
    t = torch.log((i + 2) / (i + 1))
    b = logp[:, :-1] - logp[:, 1:]
    ok = torch.isfinite(b)  # only pairs of tokens that are both still candidates
    s_hat = (torch.where(ok, t * b, 0.0)).sum(-1, keepdim=True) / (torch.where(ok, t * t, 0.0)).sum(-1, keepdim=True).clamp(min=1e-300)
    eps = s_hat - 1
    mu = mu.double().view(-1, 1)
    N = float(vocab_size)
    denom = torch.where(eps.abs() > 1e-12, (1 - N ** (-eps)) / eps, torch.full_like(eps, math.log(N)))
    k = (2.0 ** mu / denom).pow(1 / s_hat.clamp(min=1e-12))
    k = torch.nan_to_num(k, nan=1.0, posinf=float(x.shape[1]))
    return k.clamp(1, x.shape[1]).floor().to(torch.int64)


def _mirostat_(x: Tensor, mu: Tensor, mirostat, vocab_size: int) -> Tensor:
    version = col(mirostat, x, torch.int64)
    mu = mu.float().nan_to_num(nan=0.0)  # (mu is kept finite by mirostat_update)
    if bool((version == 1).any()):
        k = _v1_k(x, mu, vocab_size)
        x1 = _top_k_(x.clone(), torch.where(version == 1, k, 0).view(-1))
        x.copy_(torch.where(version == 1, x1, x))
    if bool((version == 2).any()):
        x32 = x.float()
        logp = x32 - torch.logsumexp(x32, dim=-1, keepdim=True)
        cut = logp < -mu.view(-1, 1) * math.log(2)
        cut &= logp < logp.amax(-1, keepdim=True)  # keep at least the top token
        x.masked_fill_(cut & (version == 2), NEG_INF)
    return x


def mirostat_update(mu: Tensor, logprob: Tensor, *, mirostat_tau=5.0, mirostat_eta=0.1) -> Tensor:
    """``mu − η·(S − τ)`` with S = −logprob / ln 2 (bits) of the chosen token; returns new ``[B]``.

    Computed in float64 and kept within ±1e30 (a finite state, whatever the knobs). ``logprob``
    must be finite: a drawn token has a probability above 0."""
    if not isinstance(mu, Tensor) or not isinstance(logprob, Tensor) or mu.shape != logprob.shape:
        raise TemperanceError("mirostat_update needs mu and logprob as tensors of one shape [B]")
    if not bool(torch.isfinite(logprob).all()):
        raise TemperanceError(f"logprob must be finite (the chosen token's log-probability), got "
                              f"{logprob.tolist()}")
    tau = knob("mirostat_tau", mirostat_tau, mu.view(-1, 1))
    eta = knob("mirostat_eta", mirostat_eta, mu.view(-1, 1))
    surprise = -logprob.to(torch.float64) / math.log(2)
    tau = torch.as_tensor(tau, dtype=torch.float64, device=mu.device)
    eta = torch.as_tensor(eta, dtype=torch.float64, device=mu.device)
    new = mu.to(torch.float64) - eta * (surprise - tau)
    return new.nan_to_num(nan=0.0).clamp(-LIMIT, LIMIT).to(mu.dtype)


def mirostat(logits: Tensor, *, mu, mirostat=2) -> Tensor:
    """Truncate with mirostat v1/v2 at control value ``mu`` (a float or ``[B]`` tensor)."""
    check_logits(logits)
    mirostat = knob("mirostat", mirostat, logits)
    if not isinstance(mirostat, Tensor) and mirostat == 0:
        raise TemperanceError("mirostat must be 1 or 2 for ops.mirostat, got 0")
    B = logits.shape[0]
    try:
        mu = torch.as_tensor(mu, dtype=torch.float64).float().reshape(-1)
    except (TypeError, ValueError, RuntimeError):
        raise TemperanceError(f"mu must be a number or a [B] tensor, got {mu!r}") from None
    if mu.numel() not in (1, B) or bool(torch.isnan(mu).any()):
        raise TemperanceError(f"mu must be a number (not NaN) or {B} of them, got {mu.tolist()}")
    return _mirostat_(logits.clone(), mu.expand(B), mirostat, logits.shape[1])


BEFORE = ("logit_bias", "penalties", "temperature")  # what still runs before mirostat

STAGE = Stage(
    "mirostat", apply=None, in_order=False,  # stateful: the chain runs it with its mu
    paper="Basu et al. 2021, ICLR", summary="v1/v2; when on, replaces truncation and the draw",
    active=lambda p: p.mirostat > 0,
    knobs=(
        Knob("mirostat", 0, lambda x: x in (0, 1, 2), "{0, 1, 2} (0 = off)",
             "mirostat version; replaces truncation", flag="--mirostat", integer=True),
        Knob("mirostat_tau", 5.0, lambda x: 0 <= x <= LIMIT, "[0, 1e30]",
             "target surprise in bits per token", flag="--mirostat-ent"),
        Knob("mirostat_eta", 0.1, lambda x: 0 <= x <= LIMIT, "[0, 1e30]",
             "learning rate of mu", flag="--mirostat-lr"),
    ))

"""Exact scoring without generation: every configuration on the logits of one teacher-forced pass.

One forward pass of the model over held-out text gives, at every position t, the logits ``l_t``
and the true next token ``y_t``. A configuration turns ``l_t`` into the distribution it would
sample from, ``q_t`` (its chain, with the true prefix as history, so penalties and DRY see what
they would see while generating), and we read off, exactly, per position:

- **accuracy** ``q(y)``: the chance a draw is the true token (CALM's accuracy at n = 1);
- **collision** ``sum_x q(x)^2``: the chance two draws agree (CALM's collision; inverse diversity);
- **brier** ``2 q(y) - sum_x q(x)^2``: the Brier score (higher is better), strictly proper and
  finite under truncation, where the NLL ``-log q(y)`` is infinite as soon as y is cut;
- **miss_rate** ``1{q(y) = 0}``: truncation removed the true token;
- **kept_size** ``|{x : q(x) > 0}|`` and **entropy** ``-sum q log2 q`` (bits).

Rows report position-weighted means; intervals resample *windows* (the independent units).

Special cases:

- ``temperature = 0`` (greedy) is the point mass on the first maximum of the processed logits.
- **XTC** is random: with probability ``p = xtc_probability`` it removes the top choices. Its
  distribution is the exact mixture ``q = (1 - p) q_off + p q_on`` of the chain with XTC off and
  with it always on.
- **Mirostat** carries state (``mu``) from token to token. Here ``mu`` follows the *reference*
  path: after each position ``mu <- mu - eta (S - tau)`` with ``S = -log2 q(y)``, the surprise of
  the true token under the truncated distribution (or under the distribution entering mirostat
  when y was truncated, where the true surprise is infinite). While generating, mu follows the
  model's own samples, so this is an approximation of what mirostat does, documented as such.

Kept-set fingerprints: for every window, a sha256 of the kept token ids at each position. Two
configurations with equal fingerprints kept exactly the same sets (top-nσ's temperature
invariance is checked this way).

Cost: one forward pass (shared), then per configuration one chain call on ``[rows, V]`` blocks.

>>> import torch
>>> from temperance import SamplingParams
>>> logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 3.0]]); y = torch.tensor([0, 1])
>>> s = score_block(logits, y, SamplingParams(top_k=1))
>>> s["accuracy"].tolist(), s["miss"].tolist(), s["kept_size"].tolist()
([1.0, 0.0], [0.0, 1.0], [1.0, 1.0])
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from ..batch import Batch
from ..chain import Chain
from ..errors import TemperanceError
from ..ops.mirostat import mirostat_update
from ..params import SamplingParams
from ..states import MirostatState

__all__ = ["make_windows", "forward_logits", "score_block", "score_config", "SUMS", "BLOCK"]

SUMS = ("accuracy", "collision", "brier", "miss", "kept_size", "entropy")
BLOCK = 256           # rows per chain call
_HISTORY = ("penalties", "dry", "no_repeat_ngram")
LN2 = math.log(2)


def make_windows(tokenizer: Any, docs: Sequence[str], window: int, positions: int,
                 min_len: int = 16) -> list[list[int]]:
    """Cut the tokenised documents into windows of ``window + 1`` tokens (``window`` scored
    positions each), in order, until ``positions`` positions; a document's short tail is kept when
    it has at least ``min_len`` positions."""
    if window < 1 or positions < 1:
        raise TemperanceError(f"--window and --positions must be >= 1, got {window}, {positions}")
    out, total = [], 0
    for d in docs:
        ids = list(tokenizer.encode(d))
        for s in range(0, max(len(ids) - 1, 0), window):
            w = ids[s:s + window + 1]
            if len(w) - 1 < min(min_len, window):
                continue
            w = w[: positions - total + 1]
            out.append(w)
            total += len(w) - 1
            if total >= positions:
                return out
    if not out:
        raise TemperanceError("the held-out text is too short to score (no window of "
                              f"{min(min_len, window)} tokens)")
    return out


@torch.no_grad()
def forward_logits(model: Any, window: Sequence[int]) -> Tensor:
    """Teacher-forced logits ``[len(window) - 1, V]`` float32 (position t predicts window[t + 1])."""
    ids = torch.as_tensor([list(window[:-1])], dtype=torch.long, device=next(model.parameters()).device)
    return model(input_ids=ids).logits[0].float().cpu()


def _histories(windows: Sequence[Sequence[int]]) -> Tensor:
    """``[N, L]`` right-aligned true prefixes for every position of every window (-1 padded)."""
    L = max(len(w) - 1 for w in windows)
    rows = []
    for w in windows:
        n = len(w) - 1
        tok = torch.as_tensor(list(w[:n]), dtype=torch.int64)
        t = torch.arange(n).view(-1, 1)
        j = torch.arange(L).view(1, -1) - (L - 1 - t)          # index into the window per column
        rows.append(torch.where(j >= 0, tok[j.clamp(min=0, max=n - 1)], -1))
    return torch.cat(rows)


def _dist(logits: Tensor, params: SamplingParams, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
    """``(q, ids, kept)``: the configuration's distribution over its candidates ``[B, K]``.

    ``kept`` says which candidates survived (finite logits): a kept token whose probability
    underflows to 0 in floating point is still kept, and is not a miss."""
    c = Chain(params).candidates(logits, batch)
    if params.temperature == 0:  # greedy: the point mass on the first maximum (lowest id)
        pos = c.logits.argmax(-1, keepdim=True)
        one = torch.ones(pos.shape, dtype=torch.float32)
        return one, c.ids.gather(1, pos), one.bool()
    return torch.softmax(c.logits, -1), c.ids, torch.isfinite(c.logits)


def _xtc_dist(logits: Tensor, params: SamplingParams, batch_of: Callable) -> tuple[Tensor, Tensor, Tensor]:
    """XTC's exact mixture, dense over the vocabulary."""
    p = params.xtc_probability
    B, V = logits.shape
    out = torch.zeros(B, V + 1, dtype=torch.float64)
    kept = torch.zeros(B, V + 1, dtype=torch.bool)
    for prob, w in ((0.0, 1 - p), (1.0, p)):
        sub = dataclasses.replace(params, xtc_probability=prob)
        q, ids, k = _dist(logits, sub, batch_of(sub))
        if w == 0:
            continue
        cols = torch.where(k, ids, V)          # removed and padding entries land in column V
        out.scatter_add_(1, cols, w * q.double() * k)
        kept.scatter_(1, cols, True)
    return out[:, :V].float(), torch.arange(V).expand(B, V), kept[:, :V]


def _stats(q: Tensor, ids: Tensor, kept: Tensor, y: Tensor) -> dict[str, Tensor]:
    q = torch.where(kept, q, 0.0)
    if ids.stride(0) == 0:  # the whole vocabulary (ids = arange): y is its own position
        pos = y.view(-1, 1)
        hit = kept.gather(1, pos)
    else:
        pos = torch.searchsorted(ids, y.view(-1, 1)).clamp(max=ids.shape[1] - 1)
        hit = (ids.gather(1, pos) == y.view(-1, 1)) & kept.gather(1, pos)
    qy = torch.where(hit, q.gather(1, pos), 0.0).view(-1).double()
    coll = (q * q).sum(-1).double()
    ent = (-torch.where(q > 0, q * torch.log(q.clamp(min=1e-38)), 0.0).sum(-1) / LN2).double()
    return {"accuracy": qy, "collision": coll, "brier": 2 * qy - coll, "miss": (~hit.view(-1)).double(),
            "kept_size": kept.sum(-1).double(), "entropy": ent}


def score_block(logits: Tensor, y: Tensor, params: SamplingParams, history: Tensor | None = None,
                breakers: Sequence | None = None) -> dict[str, Tensor]:
    """Per-row statistics ``[B]`` of one configuration on a block of positions (not mirostat);
    also ``_mask``, the kept set as a dense ``[B, V]`` bool (for fingerprints)."""
    if params.mirostat:
        raise TemperanceError("mirostat is stateful: score it along a window with score_config")
    B, V = logits.shape
    needs = any(params.active(n) for n in _HISTORY)

    def batch_of(p: SamplingParams) -> Batch:
        return Batch([p] * B, history=history if needs else None, seed=torch.zeros(B, dtype=torch.int64),
                     dry_breakers=[breakers] * B if needs and breakers is not None else None)

    if params.active("xtc") and 0 < params.xtc_probability < 1:
        q, ids, kept = _xtc_dist(logits, params, batch_of)
    else:
        if params.active("xtc"):  # probability 1: always on (the coin always acts)
            params = dataclasses.replace(params, xtc_probability=1.0)
        q, ids, kept = _dist(logits, params, batch_of(params))
    out = _stats(q, ids, kept, y)
    if ids.shape[1] == V and ids.stride(0) == 0:
        out["_mask"] = kept
    else:
        mask = torch.zeros(B, V + 1, dtype=torch.bool)
        mask.scatter_(1, torch.where(kept, ids, V), True)
        out["_mask"] = mask[:, :V]
    return out


def _packed(mask: Tensor) -> np.ndarray:
    """The kept set of each row as packed bits ``[B, ceil(V / 8)]`` (what fingerprints hash)."""
    return np.packbits(mask.numpy(), axis=1)


def score_config(params: SamplingParams, logits: Tensor, windows: Sequence[Sequence[int]],
                 breakers: Sequence | None = None, block: int = BLOCK) -> list[dict]:
    """Per-window sums of every statistic (and a kept-set fingerprint) for one configuration.

    ``logits`` is ``[N, V]``, the concatenated positions of ``windows`` (``len(w) - 1`` each).
    """
    lens = [len(w) - 1 for w in windows]
    if sum(lens) != logits.shape[0]:
        raise TemperanceError(f"{logits.shape[0]} rows of logits for {sum(lens)} positions")
    if params.mirostat:
        return _score_mirostat(params, logits, windows, breakers)
    y = torch.cat([torch.as_tensor(list(w[1:]), dtype=torch.int64) for w in windows])
    needs = any(params.active(n) for n in _HISTORY)
    hist = _histories(windows) if needs else None
    sums = {k: [] for k in SUMS}
    hashes = [hashlib.sha256() for _ in lens]
    owner = np.repeat(np.arange(len(lens)), lens)        # window of every row
    for s in range(0, logits.shape[0], block):
        e = min(s + block, logits.shape[0])
        st = score_block(logits[s:e], y[s:e], params, hist[s:e] if hist is not None else None, breakers)
        for k in SUMS:
            sums[k].append(st[k])
        bits = _packed(st["_mask"])
        for w in np.unique(owner[s:e]):
            hashes[w].update(bits[owner[s:e] == w].tobytes())
    return _per_window({k: torch.cat(v) for k, v in sums.items()}, hashes, lens)


def _per_window(stats: dict[str, Tensor], hashes: list, lens: list[int]) -> list[dict]:
    out, row = [], 0
    for n, h in zip(lens, hashes):
        rec = {"n": n, "fingerprint": h.hexdigest()[:24]}
        for name, v in stats.items():
            rec[name] = float(v[row:row + n].sum())
        out.append(rec)
        row += n
    return out


def _score_mirostat(params: SamplingParams, logits: Tensor, windows: Sequence[Sequence[int]],
                    breakers: Sequence | None) -> list[dict]:
    """Mirostat along the reference path: positions in order, one row per window."""
    lens = [len(w) - 1 for w in windows]
    starts = np.cumsum([0] + lens[:-1])
    W, L = len(windows), max(lens)
    chain = Chain(params)
    mu = torch.full((W,), 2 * params.mirostat_tau, dtype=torch.float32)
    acc = {k: torch.zeros(W, dtype=torch.float64) for k in SUMS}
    hashes = [hashlib.sha256() for _ in range(W)]
    for t in range(L):
        live = [i for i in range(W) if t < lens[i]]
        rows = torch.as_tensor([int(starts[i]) + t for i in live])
        hist = [list(windows[i][: t + 1]) for i in live]
        batch = Batch([params] * len(live), history=hist, seed=torch.zeros(len(live), dtype=torch.int64),
                      dry_breakers=[breakers or []] * len(live))
        stages = chain.stages(logits[rows], batch, state=MirostatState(batch, mu[live]))
        before = stages[-2][1] if len(stages) > 1 else logits[rows]
        q = torch.softmax(stages[-1][1], -1)
        y = torch.as_tensor([windows[i][t + 1] for i in live])
        V = q.shape[1]
        kept = torch.isfinite(stages[-1][1])
        st = _stats(q.float(), torch.arange(V).expand(len(live), V), kept, y)
        qy = st["accuracy"]
        p_in = torch.log_softmax(before.double(), -1).gather(1, y.view(-1, 1)).view(-1)
        lp = torch.where(qy > 0, torch.log(qy.clamp(min=1e-300)), p_in)
        mu[live] = mirostat_update(mu[live], lp, mirostat_tau=params.mirostat_tau,
                                   mirostat_eta=params.mirostat_eta)
        bits = _packed(kept)
        for j, i in enumerate(live):
            for k in SUMS:
                acc[k][i] += st[k][j]
            hashes[i].update(bits[j].tobytes())
    return [{"n": lens[i], "fingerprint": hashes[i].hexdigest()[:24],
             **{k: float(acc[k][i]) for k in SUMS}} for i in range(W)]

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

Cost: one forward pass (shared), then per configuration one chain call per block of 32 rows and
one float64 pass per row for the statistics (a native kernel; the torch code is the reference).
About 0.4 ms per configuration and position on one CPU core at V = 49152 (mirostat, stepped
position by position, and XTC's two-part mixture cost 3-5 times that); `benchmarks/score.py`.

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
from ..candidates import Candidates
from ..chain import Chain
from ..errors import TemperanceError
from ..ops import _native
from ..ops.mirostat import mirostat_update
from ..params import SamplingParams
from ..states import MirostatState

__all__ = ["make_windows", "forward_logits", "score_block", "score_config", "SUMS", "BLOCK"]

SUMS = ("accuracy", "collision", "brier", "miss", "kept_size", "entropy")
BLOCK = 32            # rows per chain call (small enough that the temporaries stay in cache)
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


def _dist(logits: Tensor, params: SamplingParams, batch: Batch) -> Candidates:
    """The configuration's processed logits over its candidates (``-inf``: removed); greedy
    (``temperature = 0``) is the point mass on the first maximum (lowest id)."""
    c = Chain(params).candidates(logits, batch)
    if params.temperature == 0:
        pos = c.logits.argmax(-1, keepdim=True)
        return Candidates(torch.zeros(pos.shape), c.ids.gather(1, pos), c.vocab_size)
    return c


def _xtc_dist(logits: Tensor, params: SamplingParams, batch_of: Callable) -> tuple[Tensor, Tensor]:
    """XTC's exact mixture, dense over the vocabulary: ``(q, kept)`` ``[B, V]``."""
    p = params.xtc_probability
    q, kept = 0.0, torch.zeros(logits.shape, dtype=torch.bool)
    for prob, w in ((0.0, 1 - p), (1.0, p)):
        sub = dataclasses.replace(params, xtc_probability=prob)
        d = _dist(logits, sub, batch_of(sub)).dense()
        q = q + w * torch.softmax(d.double(), -1)
        kept |= d > -math.inf
    return q, kept


def _true_column(ids: Tensor, y: Tensor, dense: bool) -> Tensor:
    """The column of each row's true token among its candidates, ``[B]`` (-1: not a candidate)."""
    if dense:
        return y
    pos = torch.searchsorted(ids, y.view(-1, 1)).clamp(max=ids.shape[1] - 1)
    return torch.where(ids.gather(1, pos) == y.view(-1, 1), pos, -1).view(-1)


def _q_stats(q: Tensor, kept: Tensor, pos: Tensor) -> dict[str, Tensor]:
    """The statistics of rows of probabilities ``q`` (0 where removed), ``kept`` their support,
    ``pos`` the true token's column (-1: absent); float64 ``[B]`` each."""
    q = q.double()
    hit = (pos >= 0) & kept.gather(1, pos.clamp(min=0).view(-1, 1)).view(-1)
    qy = torch.where(hit, q.gather(1, pos.clamp(min=0).view(-1, 1)).view(-1), 0.0)
    coll = torch.linalg.vecdot(q, q)
    ent = torch.special.entr(q).sum(-1) / LN2
    return {"accuracy": qy, "collision": coll, "brier": 2 * qy - coll, "miss": (~hit).double(),
            "kept_size": torch.count_nonzero(kept, dim=-1).double(), "entropy": ent}


def _logit_stats(c: Candidates, y: Tensor) -> dict[str, Tensor]:
    """The statistics of ``softmax(c.logits)``, and ``_mask``, the kept set dense ``[B, V]``.

    The native kernel computes them in one float64 pass per row (and the mask of a dense row on
    the way); the torch code is the reference and runs wherever it does not."""
    V = c.vocab_size
    dense = c.is_whole
    pos = _true_column(c.ids, y, dense)
    r = _native.softmax_stats(c.logits, pos, mask=dense) if _native.usable(c.logits) else None
    if r is not None:
        o, mask = r
        hit = (pos >= 0) & (c.logits.gather(1, pos.clamp(min=0).view(-1, 1)).view(-1) > -math.inf)
        qy = torch.where(hit, o[:, 0], 0.0)
        out = {"accuracy": qy, "collision": o[:, 1], "brier": 2 * qy - o[:, 1], "miss": (~hit).double(),
               "kept_size": o[:, 3], "entropy": o[:, 2] / LN2}
        kept = mask if dense else c.logits > -math.inf
    else:
        kept = c.logits > -math.inf
        out = _q_stats(torch.softmax(c.logits.double(), -1), kept, pos)
    if dense:
        out["_mask"] = kept
    else:
        mask = torch.zeros(c.logits.shape[0], V + 1, dtype=torch.bool)
        out["_mask"] = mask.scatter_(1, torch.where(kept, c.ids, V), True)[:, :V]
    return out


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
        q, kept = _xtc_dist(logits, params, batch_of)
        return {**_q_stats(q, kept, y), "_mask": kept}
    if params.active("xtc"):  # probability 1: always on (the coin always acts)
        params = dataclasses.replace(params, xtc_probability=1.0)
    return _logit_stats(_dist(logits, params, batch_of(params)), y)


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
    needs = any(params.active(n) for n in _HISTORY)
    for t in range(L):
        live = [i for i in range(W) if t < lens[i]]
        rows = torch.as_tensor([int(starts[i]) + t for i in live])
        hist = [list(windows[i][: t + 1]) for i in live] if needs else None
        batch = Batch([params] * len(live), history=hist, seed=torch.zeros(len(live), dtype=torch.int64),
                      dry_breakers=[breakers or []] * len(live) if needs else None)
        stages = chain.stages(logits[rows], batch, state=MirostatState(batch, mu[live]))
        before = stages[-2][1] if len(stages) > 1 else logits[rows]
        x = stages[-1][1]
        y = torch.as_tensor([windows[i][t + 1] for i in live])
        st = _logit_stats(Candidates.whole(x), y)
        kept = st["_mask"]
        qy = st["accuracy"]
        lp = torch.log(qy.clamp(min=1e-300))
        cut = qy == 0  # y truncated: its surprise under the distribution entering mirostat
        if bool(cut.any()):
            b = before[cut].double()
            lp[cut] = (b.gather(1, y[cut].view(-1, 1)) - b.logsumexp(-1, keepdim=True)).view(-1)
        mu[live] = mirostat_update(mu[live], lp, mirostat_tau=params.mirostat_tau,
                                   mirostat_eta=params.mirostat_eta)
        bits = _packed(kept)
        for j, i in enumerate(live):
            for k in SUMS:
                acc[k][i] += st[k][j]
            hashes[i].update(bits[j].tobytes())
    return [{"n": lens[i], "fingerprint": hashes[i].hexdigest()[:24],
             **{k: float(acc[k][i]) for k in SUMS}} for i in range(W)]

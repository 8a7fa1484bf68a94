"""CALM's likelihood-free temperature in the harness: accuracy and collision over the batch size N.

CALM (Shao et al., arXiv 2510.27688, §7.5) samples at temperature ``T = 1/n`` from draws alone:
its batch sampler (`temperance.implicit`, Algorithm 2) draws N samples of the model at T = 1 and
picks x with weight ``C(count_x, n)`` (the collisions in the batch, lowering n while nothing
repeats). It measures the result by the Brier split into **accuracy** ``E[1{x = y}]`` and
**collision** ``E[1{x1 = x2}]`` and finds that N moves the pair much more than T does, and that
large N approaches the softmax-temperature curve of a model with logits.

Here the black box is the model's own next-token distribution ``p_t`` at each position of
held-out text (chunks of K = 1 token, so the batch sampler at N -> inf is exactly softmax at
``T = 1/n``). Per position we draw M independent batches of N tokens from ``p_t`` and, for each,
the sampler's output distribution given the batch, ``P_b(x) = w_x / sum w``
(`implicit.collision_weights`). Then, without further sampling noise:

- accuracy ``= mean_b P_b(y)`` (unbiased for ``P_alg(y)``);
- collision ``= sum_x P_alg(x)^2``, estimated without bias from distinct batches:
  ``(||sum_b P_b||^2 - sum_b ||P_b||^2) / (M (M - 1))``.

Softmax temperature gives the same pair exactly: ``q_T(y)`` and ``sum q_T^2``.

n-grams (CALM's summary is the geometric mean over n = 1..4): the n-gram accuracy of a per-token
sampler is exactly the product of its accuracies along the reference, ``prod_i a(t + i)`` (to
emit y_{t..t+n-1} each step must emit y given the true prefix). The n-gram collision runs over
the model's *own* continuations, which teacher forcing does not see; we approximate it by the
product of the per-position collisions along the reference path and say so in every output
(``summary``). The n = 1 pair is exact.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..implicit import collision_weights
from .score import forward_logits

__all__ = ["calm_position_stats", "run_calm", "SOFTMAX_T", "CALM_T", "CALM_N"]

SOFTMAX_T = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 1 / 3)
CALM_T = (1 / 2, 1 / 3)
CALM_N = (1, 10, 20, 50, 100, 200)
NGRAM = 4


def calm_position_stats(p: torch.Tensor, y: torch.Tensor, order: int, N: int, batches: int,
                        gen: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per position ``(accuracy, collision)`` of the batch sampler at T = 1/order with N draws.

    ``p`` is ``[P, V]`` (rows sum to 1), ``y`` ``[P]`` the true tokens; `batches` (M >= 2) batches.
    """
    P = p.shape[0]
    draws = torch.multinomial(p, batches * N, replacement=True, generator=gen).view(P, batches, N).numpy()
    yv = y.numpy()
    acc, coll = np.empty(P), np.empty(P)
    for i in range(P):
        total: dict[int, float] = {}
        sq = 0.0
        a = 0.0
        for b in range(batches):
            u, c = np.unique(draws[i, b], return_counts=True)
            _, w = collision_weights(dict(zip(u.tolist(), c.tolist())), order)
            z = float(sum(w.values()))
            pb = {x: v / z for x, v in w.items()}
            a += pb.get(int(yv[i]), 0.0)
            sq += sum(v * v for v in pb.values())
            for x, v in pb.items():
                total[x] = total.get(x, 0.0) + v
        acc[i] = a / batches
        coll[i] = (sum(v * v for v in total.values()) - sq) / (batches * (batches - 1))
    return acc, coll


def _ngram(a: np.ndarray, lens: Sequence[int], n: int) -> list[np.ndarray]:
    """Per window: the product of n consecutive per-position values (positions with n ahead)."""
    out, s = [], 0
    for L in lens:
        w = a[s:s + L]
        s += L
        if L < n:
            out.append(np.array([]))
            continue
        out.append(np.prod(np.stack([w[i:L - n + 1 + i] for i in range(n)]), axis=0))
    return out


def _summaries(acc: np.ndarray, coll: np.ndarray, lens: Sequence[int]) -> dict:
    """n = 1 and the geometric mean over n = 1..4, with window-bootstrap intervals."""
    res = {}
    per_n_a, per_n_c = [], []
    for n in range(1, NGRAM + 1):
        wa, wc = _ngram(acc, lens, n), _ngram(coll, lens, n)
        per_n_a.append(wa)
        per_n_c.append(wc)
    rng = np.random.default_rng(0)
    W = len(lens)
    idx = rng.integers(0, W, size=(300, W))

    def gm(sel: np.ndarray, which: list) -> float:
        vals = []
        for wins in which:
            x = np.concatenate([wins[j] for j in sel]) if len(sel) else np.array([])
            vals.append(max(float(x.mean()), 1e-300) if x.size else math.nan)
        return float(np.exp(np.mean(np.log(vals))))

    def n1(sel: np.ndarray, which: list) -> float:
        return float(np.concatenate([which[0][j] for j in sel]).mean())

    allw = np.arange(W)
    for key, f in (("n1", n1), ("gm", gm)):
        for m, which in (("accuracy", per_n_a), ("collision", per_n_c)):
            v = f(allw, which)
            boots = np.array([f(row, which) for row in idx]) if W > 1 else np.array([v])
            res[f"{m}_{key}"] = v
            res[f"{m}_{key}_ci"] = [float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))]
    return res


def run_calm(runtime: Any, windows: Sequence[Sequence[int]], *, batches: int = 32, out: str | Path | None = None,
             seed: int = 0, temperatures: Sequence[float] = SOFTMAX_T, calm_t: Sequence[float] = CALM_T,
             calm_n: Sequence[int] = CALM_N, progress: bool = False) -> dict:
    """The softmax-T curve and CALM's N sweeps on the same positions; writes ``calm.json`` to `out`."""
    from .cells import _Progress

    if batches < 2:
        raise ValueError(f"batches must be >= 2 (the collision estimate pairs distinct batches), got {batches}")
    lens = [len(w) - 1 for w in windows]
    logits = torch.cat([forward_logits(runtime.model, w) for w in windows]).double()
    y = torch.cat([torch.as_tensor(list(w[1:]), dtype=torch.int64) for w in windows])
    points = []
    for T in temperatures:
        q = torch.softmax(logits / T, -1)
        a = q.gather(1, y.view(-1, 1)).view(-1).numpy()
        c = (q * q).sum(-1).numpy()
        points.append({"method": "softmax", "T": T, "N": None, **_summaries(a, c, lens)})
    p = torch.softmax(logits, -1).float()
    gen = torch.Generator().manual_seed(seed)
    bar = _Progress(len(calm_t) * len(calm_n), "calm", progress)
    try:
        for T in calm_t:
            order = round(1 / T)
            for N in calm_n:
                a, c = calm_position_stats(p, y, order, N, batches, gen)
                points.append({"method": "calm", "T": T, "N": N, **_summaries(a, c, lens)})
                bar.advance()
    finally:
        bar.stop()
    for pt in points:  # the figure's default pair: the n-gram summary
        pt["accuracy"], pt["collision"] = pt["accuracy_gm"], pt["collision_gm"]
    res = {"points": points, "positions": int(sum(lens)), "windows": len(lens), "batches": batches,
           "summary": "geometric mean n=1..4; n-gram collision along the reference path (approx.)",
           "trend": calm_trend(points)}
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "calm.json").write_text(json.dumps(res, indent=1))
    return res


def calm_trend(points: Sequence[dict], key: str = "n1") -> dict:
    """N's range against T's range of (accuracy, collision), and the distance to softmax by N."""
    calm = [p for p in points if p["method"] == "calm"]
    soft = {round(p["T"], 6): p for p in points if p["method"] == "softmax"}
    Ts, Ns = sorted({p["T"] for p in calm}), sorted({p["N"] for p in calm})
    if len(Ts) < 2 or len(Ns) < 2:
        return {"verdict": "not measured", "details": "needs two T and two N"}
    at = {(p["T"], p["N"]): p for p in calm}
    tmin, nmax = min(Ts), max(Ns)
    table = []
    n_moves = True
    for m in ("accuracy", "collision"):
        k = f"{m}_{key}"
        by_n = [at[(tmin, n)][k] for n in Ns]
        by_t = [at[(t, nmax)][k] for t in Ts]
        rn, rt = max(by_n) - min(by_n), max(by_t) - min(by_t)
        n_moves &= rn > rt
        table.append({"metric": m, "range_over_N_at_T": [round(tmin, 4), rn], "range_over_T_at_N": [nmax, rt]})
    approach = True
    for t in Ts:
        s = soft.get(round(t, 6))
        if s is None:
            continue
        d = [abs(at[(t, n)][f"accuracy_{key}"] - s[f"accuracy_{key}"]) +
             abs(at[(t, n)][f"collision_{key}"] - s[f"collision_{key}"]) for n in Ns]
        approach &= d[-1] < d[0]
        table.append({"T": round(t, 4), "distance_to_softmax_by_N": dict(zip(Ns, [round(x, 5) for x in d]))})
    v = "reproduced" if n_moves and approach else ("partly reproduced" if n_moves or approach else "not reproduced")
    return {"verdict": v, "table": table,
            "details": f"n = 1 (exact): N range > T range for accuracy and collision: {n_moves}; "
                       f"distance to the softmax point at the same T shrinks from N={Ns[0]} to N={Ns[-1]}: {approach}"}

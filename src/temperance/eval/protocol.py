"""The comparison protocol over a finished grid: paired tests with Holm, Best-of-N, the trends.

- `comparisons`: on every verifiable task, at every temperature, each pair of settings run at
  that temperature is compared on accuracy with a paired bootstrap over prompts (the
  configurations share seeds per (prompt, sample)); on score, the same on the Brier score over
  windows. The p-values of one task (every temperature and pair) form one family and are
  Holm-adjusted together.
- `best_of_n_curves`: per task and sampler family, the critique's Best-of-N budget curve over the
  family's configurations (its temperatures x knob values), with prompt-bootstrap intervals;
  greedy (a single configuration) is a reference line, not a curve. `gap` summarises how far
  apart the families are at a budget N (max - min of the curves, with a joint bootstrap
  interval): small-N robustness at N = 1, the peak at the largest N every family has.
- `trends`: the issue's five claims checked against the rows, each with its numbers and a
  verdict (``reproduced`` / ``not reproduced`` / ``not measured``). No result is forced: a verdict
  is a comparison of the numbers with the claim as stated in `TRENDS`.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from typing import Iterable, Sequence

import numpy as np

from . import stats
from .rows import prompt_matrix, window_matrix

__all__ = ["comparisons", "best_of_n_curves", "gap", "trends", "TRENDS"]

TRENDS = {
    "collapse": "On easy verifiable questions pure sampling and top-p 0.9 fall towards 0 accuracy as T "
                "rises to 2-3, while min-p 0.1 and top-nσ 1.0 keep a large part (>= 50%) of greedy's.",
    "invariance": "top-nσ's kept set is identical at T ∈ {0.1, 1, 10} (exact, from score).",
    "best_of_n": "Best-of-N curves of the samplers approach each other as N grows.",
    "calm": "CALM: N moves accuracy and collision more than T does; larger N approaches the softmax curve.",
    "diversity": "Diversity (distinct-n, embedding distance) rises with temperature for every sampler.",
}


def _by(rows: Iterable[dict], **eq) -> list[dict]:
    return [r for r in rows if all(r.get(k) == v for k, v in eq.items())]


def comparisons(records: Sequence[dict], rows: Sequence[dict]) -> list[dict]:
    """Paired tests between settings at equal temperature, Holm-adjusted within each task."""
    out = []
    for task in sorted({r["task"] for r in rows if r["kind"] == "generate" and r.get("verifiable")}):
        _, mat = prompt_matrix(records, task, "accuracy")
        out += _pairs(_by(rows, kind="generate", task=task), mat, task, "accuracy")
    score_rows = _by(rows, kind="score")
    if score_rows:
        mat = window_matrix(records, "brier")
        for task in sorted({r["task"] for r in score_rows}):
            out += _pairs(_by(score_rows, task=task), mat, task, "brier")
    for task in {c["task"] for c in out}:  # one family per task (its metric, every T and pair)
        fam = [c for c in out if c["task"] == task]
        for c, p in zip(fam, stats.holm([c["p"] for c in fam])):
            c["p_holm"] = p
    return out


def _pairs(rows: Sequence[dict], mat: dict, task: str, metric: str) -> list[dict]:
    greedy = [r for r in rows if r["sampler"] == "greedy"]
    out = []
    for T in sorted({r["temperature"] for r in rows if r["sampler"] != "greedy"}):
        at = [r for r in rows if r["temperature"] == T and r["sampler"] != "greedy"] + greedy
        for a, b in itertools.combinations(at, 2):
            if a["label"] in mat and b["label"] in mat:
                t = stats.paired_test(mat[a["label"]], mat[b["label"]])
                out.append({"task": task, "metric": metric, "temperature": T, "a": a["label"],
                            "b": b["label"], **t})
    return out


def best_of_n_curves(records: Sequence[dict], rows: Sequence[dict]) -> list[dict]:
    """Per (task, metric, family): the Best-of-N curve with intervals, and the families' matrices."""
    out = []
    tasks = [(t, "accuracy") for t in sorted({r["task"] for r in rows
                                              if r["kind"] == "generate" and r.get("verifiable")})]
    if any(r["kind"] == "score" for r in rows):
        tasks += [(t, m) for t in sorted({r["task"] for r in rows if r["kind"] == "score"})
                  for m in ("brier", "accuracy")]
    for task, metric in tasks:
        if task.startswith("score:"):
            mat = window_matrix(records, metric)
            rs = _by(rows, kind="score", task=task)
        else:
            _, mat = prompt_matrix(records, task, metric)
            rs = _by(rows, kind="generate", task=task)
        fams = defaultdict(list)
        for r in rs:
            if r["label"] in mat:
                fams[r["sampler"]].append(r["label"])
        for fam, labels in sorted(fams.items()):
            m = np.stack([mat[x] for x in labels])
            curve = stats.best_of_n_ci(m) if fam != "greedy" else None
            out.append({"task": task, "metric": metric, "sampler": fam, "configs": labels,
                        "curve": curve, "matrix": m, "greedy": fam == "greedy"})
    return out


def gap(curves: Sequence[dict], n: int, *, b: int = 500, seed: int = 0) -> dict:
    """Max - min over families of the Best-of-N value at budget `n`, with a joint prompt bootstrap."""
    fams = [c for c in curves if not c["greedy"] and c["matrix"].shape[0] >= n]
    if len(fams) < 2:
        return {"n": n, "gap": math.nan, "lo": math.nan, "hi": math.nan, "families": len(fams)}
    mats = [c["matrix"] for c in fams]
    ok = np.all(np.stack([np.all(np.isfinite(m), axis=0) for m in mats]), axis=0)
    mats = [m[:, ok] for m in mats]
    P = mats[0].shape[1]

    def value(cols) -> float:
        v = [stats._curve(m[:, cols].mean(1))[n - 1] for m in mats]
        return max(v) - min(v)

    g = value(np.arange(P))
    idx = np.random.default_rng(seed).integers(0, P, size=(b, P))
    boots = np.array([value(row) for row in idx])
    lo, hi = np.quantile(boots, [stats.ALPHA / 2, 1 - stats.ALPHA / 2])
    return {"n": n, "gap": float(g), "lo": float(lo), "hi": float(hi), "families": len(fams),
            "values": {c["sampler"]: float(c["curve"]["mean"][n - 1]) for c in fams}}


# -- the trends -----------------------------------------------------------------------------------


def _collapse(rows: Sequence[dict], comps: Sequence[dict]) -> dict:
    gen = [r for r in rows if r["kind"] == "generate" and r.get("verifiable") and "accuracy" in r]
    tasks = sorted({r["task"] for r in gen}, key=lambda t: t != "easy")
    if not tasks:
        return {"verdict": "not measured", "details": "no verifiable generation task in the run"}
    task = tasks[0]
    rs = _by(gen, task=task)
    g = [r for r in rs if r["sampler"] == "greedy"]
    hot = [T for T in sorted({r["temperature"] for r in rs}) if T >= 2]
    want = {"pure": "pure", "top_p": "top_p=0.9", "min_p": "min_p=0.1", "top_n_sigma": "top_n_sigma=1"}
    if not g or not hot:
        return {"verdict": "not measured", "details": f"{task}: needs greedy and a temperature >= 2"}
    base = g[0]["accuracy"]
    table, ok = [], True
    for T in hot:
        for fam, setting in want.items():
            r = [x for x in rs if x["setting"] == setting and x["temperature"] == T]
            if not r:
                ok = False
                continue
            r = r[0]
            table.append({"setting": setting, "T": T, "accuracy": r["accuracy"], "ci": r["accuracy_ci"],
                          "share_of_greedy": r["accuracy"] / base if base > 0 else math.nan})
    if not ok or not table:
        return {"verdict": "not measured", "details": f"{task}: the grid lacks one of {list(want.values())}"}
    Tmax = max(hot)
    at = {x["setting"]: x for x in table if x["T"] == Tmax}
    low = all(at[s]["accuracy"] <= 0.1 * base for s in ("pure", "top_p=0.9"))      # towards 0
    keep = all(at[s]["share_of_greedy"] >= 0.5 for s in ("min_p=0.1", "top_n_sigma=1"))
    tests = [c for c in comps if c["task"] == task and c["temperature"] == Tmax and
             {c["a"].split(" T=")[0], c["b"].split(" T=")[0]} in
             ({"min_p=0.1", "top_p=0.9"}, {"min_p=0.1", "pure"}, {"top_n_sigma=1", "top_p=0.9"},
              {"top_n_sigma=1", "pure"})]
    return {"verdict": "reproduced" if low and keep else ("partly reproduced" if low or keep else "not reproduced"),
            "task": task, "greedy": base, "greedy_ci": g[0]["accuracy_ci"], "table": table,
            "tests": tests, "details": f"at T={Tmax:g}: pure and top-p at most 10% of greedy ({base:.3f}): {low}; "
                                       f"min-p and top-nσ at least 50% of greedy: {keep}"}


def _invariance(rows: Sequence[dict]) -> dict:
    sc = [r for r in rows if r["kind"] == "score" and r["sampler"] == "top_n_sigma"]
    if not sc:
        return {"verdict": "not measured", "details": "no top-nσ configuration in score"}
    out, all_same = [], True
    for setting in sorted({r["setting"] for r in sc}):
        rs = {r["temperature"]: r for r in sc if r["setting"] == setting}
        Ts = [T for T in (0.1, 1.0, 10.0) if T in rs]
        if len(Ts) < 2:
            continue
        fps = {rs[T]["kept_fingerprint"] for T in Ts}
        same = len(fps) == 1
        all_same &= same
        out.append({"setting": setting, "temperatures": Ts, "identical": same,
                    "kept_size": [rs[T]["kept_size"] for T in Ts]})
    contrast = []
    for fam in ("min_p", "top_p"):
        fr = [r for r in rows if r["kind"] == "score" and r["sampler"] == fam]
        for setting in sorted({r["setting"] for r in fr}):
            rs = {r["temperature"]: r for r in fr if r["setting"] == setting}
            Ts = [T for T in (0.1, 1.0, 10.0) if T in rs]
            if len(Ts) >= 2:
                contrast.append({"setting": setting, "temperatures": Ts,
                                 "identical": len({rs[T]["kept_fingerprint"] for T in Ts}) == 1,
                                 "kept_size": [rs[T]["kept_size"] for T in Ts]})
    if not out:
        return {"verdict": "not measured", "details": "top-nσ needs two of T = 0.1, 1, 10 in score"}
    return {"verdict": "reproduced" if all_same else "not reproduced", "table": out, "contrast": contrast,
            "details": "kept-set fingerprints (sha256 of every kept id at every position) compared across T"}


def _best_of_n(curves: Sequence[dict]) -> dict:
    res = []
    for task, metric in sorted({(c["task"], c["metric"]) for c in curves}):
        cs = [c for c in curves if c["task"] == task and c["metric"] == metric and not c["greedy"]]
        if len(cs) < 2:
            continue
        nmax = min(c["matrix"].shape[0] for c in cs)
        if nmax < 2:
            continue
        g1, gN = gap(cs, 1), gap(cs, nmax)
        res.append({"task": task, "metric": metric, "gap_n1": g1, "gap_nmax": gN,
                    "closer": gN["hi"] < g1["lo"], "shrinks": gN["gap"] < g1["gap"]})
    if not res:
        return {"verdict": "not measured", "details": "needs two families with >= 2 configurations each"}
    closer, shrinks = [r["closer"] for r in res], [r["shrinks"] for r in res]
    v = "reproduced" if all(closer) else ("partly reproduced" if any(shrinks) else "not reproduced")
    return {"verdict": v, "table": res,
            "details": "gap = best family - worst family at budget N (N=1: the grid mean; N=max: the peak); "
                       "reproduced when the gap's interval at N=max lies below its interval at N=1"}


def _diversity(rows: Sequence[dict]) -> dict:
    gen = [r for r in rows if r["kind"] == "generate" and r["sampler"] != "greedy"]
    if not gen:
        return {"verdict": "not measured", "details": "no generation rows"}
    open_tasks = sorted({r["task"] for r in gen if not r.get("verifiable")}) or sorted({r["task"] for r in gen})
    table, total, rising = [], 0, 0
    for task in open_tasks:
        for setting in sorted({r["setting"] for r in gen if r["task"] == task}):
            rs = sorted([r for r in gen if r["task"] == task and r["setting"] == setting],
                        key=lambda r: r["temperature"])
            if len(rs) < 2:
                continue
            for m in ("distinct_2", "embedding_distance"):
                vals = [r.get(m, math.nan) for r in rs]
                if not all(map(math.isfinite, vals)):
                    continue
                rho = _spearman([r["temperature"] for r in rs], vals)
                up = vals[-1] > vals[0] and rs[-1][m + "_ci"][0] > rs[0][m + "_ci"][1] or rho > 0.5
                total += 1
                rising += bool(up)
                table.append({"task": task, "setting": setting, "metric": m,
                              "T": [r["temperature"] for r in rs], "values": vals, "spearman": rho,
                              "rises": bool(up)})
    if not total:
        return {"verdict": "not measured", "details": "needs two temperatures per setting"}
    v = "reproduced" if rising == total else ("partly reproduced" if rising else "not reproduced")
    return {"verdict": v, "table": table, "details": f"{rising}/{total} (setting, metric) curves rise with T "
                                                      "(Spearman > 0.5, or the ends' intervals separate)"}


def _spearman(x: Sequence[float], y: Sequence[float]) -> float:
    rx, ry = _ranks(x), _ranks(y)
    if np.std(rx) == 0 or np.std(ry) == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])


def _ranks(v: Sequence[float]) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    order = np.argsort(v, kind="stable")
    r = np.empty(len(v))
    r[order] = np.arange(len(v))
    for val in np.unique(v):  # ties share the mean rank
        r[v == val] = r[v == val].mean()
    return r


def trends(rows: Sequence[dict], comps: Sequence[dict], curves: Sequence[dict],
           calm: dict | None = None) -> dict:
    """The issue's claims, each with a verdict and the numbers behind it."""
    out = {"collapse": _collapse(rows, comps), "invariance": _invariance(rows),
           "best_of_n": _best_of_n(curves), "diversity": _diversity(rows)}
    out["calm"] = calm.get("trend") if calm else {"verdict": "not measured", "details": "run `temperance eval calm`"}
    for k, v in out.items():
        v["claim"] = TRENDS[k]
    return out

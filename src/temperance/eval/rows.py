"""Rows: the cell files of a run folded into one line per (task, configuration), with intervals.

`build_rows(records)` is all a report needs: it reads nothing but the cell records. A row holds

- ``kind`` (``score`` / ``generate``), ``task`` (the task name, or ``score:<text>``);
- ``sampler`` (the family), ``setting`` (family + knob values), ``label``, ``temperature``,
  ``knobs``, ``params`` (the full `SamplingParams`, sampler order included);
- each metric under its plain name with ``<metric>_ci = [lo, hi]`` (95% bootstrap over prompts
  for generation, over windows for score);
- ``n_prompts`` and ``n_samples`` (samples per prompt x seed blocks; for score: windows and
  positions).

For generation, a prompt's value is its mean over seed blocks; for score, a row's value is the
position-weighted mean over windows (``sum / n``), and the interval resamples windows.
`prompt_matrix` gives the per-prompt values that `stats` compares (paired, same prompt order).

>>> rec = {"spec": {"kind": "score", "source": "t", "config": {"seed": None}}, "config": {
...     "sampler": "pure", "setting": "pure", "label": "pure T=1", "temperature": 1.0, "knobs": {},
...     "params": {}}, "windows": [{"n": 2, "accuracy": 1.0, "collision": 1.0, "brier": 1.0,
...     "miss": 0.0, "kept_size": 4.0, "entropy": 2.0, "fingerprint": "ab"}]}
>>> r = build_rows([rec])[0]
>>> r["accuracy"], r["kept_size"], r["n_prompts"], r["n_samples"]
(0.5, 2.0, 1, 2)
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from typing import Iterable, Sequence

import numpy as np

from . import stats
from .metrics import corpus_distinct
from .score import SUMS

__all__ = ["build_rows", "prompt_matrix", "row_key", "SCORE_METRICS", "GEN_METRICS", "write_rows",
           "read_rows"]

SCORE_METRICS = ("accuracy", "collision", "brier", "miss_rate", "kept_size", "entropy")
GEN_METRICS = ("accuracy", "nll", "judge_nll", "distinct_1", "distinct_2", "distinct_3", "distinct_4", "self_bleu",
               "compression_ratio", "embedding_distance", "similar", "distinct_k", "utility_k", "slop",
               "tokens")


def row_key(rec: dict) -> str:
    """Cells with the same key fold into one row: kind, task/text, configuration, sizes."""
    s = dict(rec["spec"])
    for k in ("shard", "text", "seed_block", "version"):
        s.pop(k, None)
    return json.dumps(s, sort_keys=True, default=str)


def _base(rec: dict) -> dict:
    c = rec["config"]
    return {"sampler": c["sampler"], "setting": c["setting"], "label": c["label"],
            "temperature": c["temperature"], "knobs": c["knobs"], "params": c["params"]}


def _score_row(recs: list[dict]) -> dict:
    recs = sorted(recs, key=lambda r: r["spec"].get("shard", 0))
    wins = [w for r in recs for w in r["windows"]]
    n = np.array([w["n"] for w in wins], dtype=np.float64)
    row = {"kind": "score", "task": "score:" + recs[0]["spec"].get("source", ""), **_base(recs[0]),
           "n_prompts": len(wins), "n_samples": int(n.sum())}
    for name in SUMS:
        tot = np.array([w[name] for w in wins], dtype=np.float64)
        key = "miss_rate" if name == "miss" else name
        row[key] = float(tot.sum() / n.sum())
        row[key + "_ci"] = list(_ratio_ci(tot, n))
    h = hashlib.sha256("".join(w["fingerprint"] for w in wins).encode()).hexdigest()[:24]
    row["kept_fingerprint"] = h
    row["seconds"] = float(sum(r.get("seconds", 0.0) for r in recs))
    return row


def _ratio_ci(tot: np.ndarray, n: np.ndarray, b: int = stats.B, seed: int = 0) -> tuple[float, float]:
    if tot.size < 2:
        v = float(tot.sum() / n.sum())
        return v, v
    idx = np.random.default_rng(seed).integers(0, tot.size, size=(b, tot.size))
    r = tot[idx].sum(1) / n[idx].sum(1)
    lo, hi = np.quantile(r, [stats.ALPHA / 2, 1 - stats.ALPHA / 2])
    return float(lo), float(hi)


def _per_prompt(recs: list[dict]) -> tuple[list[str], dict[str, np.ndarray]]:
    """Prompt ids (first cell's order) and metric -> [P] means over seed blocks."""
    ids = [p["id"] for p in recs[0]["prompts"]]
    acc: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in recs:
        for p in r["prompts"]:
            for k, v in p["metrics"].items():
                acc[k][p["id"]].append(float(v) if v is not None else math.nan)
    out = {}
    for k, by in acc.items():
        out[k] = np.array([np.nanmean(by[i]) if by.get(i) and np.isfinite(by[i]).any() else math.nan
                           for i in ids])
    return ids, out


def _gen_row(recs: list[dict]) -> dict:
    recs = sorted(recs, key=lambda r: r["spec"]["seed_block"])
    spec = recs[0]["spec"]
    ids, per = _per_prompt(recs)
    row = {"kind": "generate", "task": spec["task"], "verifiable": recs[0].get("verifiable", False),
           **_base(recs[0]), "n_prompts": len(ids), "n_samples": spec["samples"] * len(recs),
           "seed_blocks": len(recs), "max_tokens": spec["max_tokens"], "chat": spec["chat"]}
    for k in GEN_METRICS:
        if k in per and np.isfinite(per[k]).any():
            m, lo, hi = stats.bootstrap_ci(per[k])
            row[k], row[k + "_ci"] = m, [lo, hi]
    texts = [s["text"] for r in recs for p in r["prompts"] for s in p["samples"]]
    row.update(corpus_distinct(texts))
    row["seconds"] = float(sum(r.get("seconds", 0.0) for r in recs))
    return row


def build_rows(records: Iterable[dict]) -> list[dict]:
    """One row per (kind, task, configuration, sizes), sorted by task, family, setting, T."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        if r["spec"]["kind"] in ("score", "generate"):
            groups[row_key(r)].append(r)
    rows = [(_score_row if g[0]["spec"]["kind"] == "score" else _gen_row)(g) for g in groups.values()]
    rows.sort(key=lambda r: (r["kind"], r["task"], r["sampler"], r["setting"], r["temperature"]))
    return rows


def prompt_matrix(records: Iterable[dict], task: str, metric: str) -> tuple[list[str], dict[str, np.ndarray]]:
    """Generation: label -> [P] per-prompt values of `metric` on `task` (same prompt order)."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        if r["spec"]["kind"] == "generate" and r["spec"]["task"] == task:
            groups[row_key(r)].append(r)
    out, order = {}, None
    for g in groups.values():
        g = sorted(g, key=lambda r: r["spec"]["seed_block"])
        ids, per = _per_prompt(g)
        if order is None:
            order = ids
        pos = {i: n for n, i in enumerate(ids)}
        if metric in per:
            out[g[0]["config"]["label"]] = np.array([per[metric][pos[i]] if i in pos else math.nan
                                                     for i in order])
    return order or [], out


def window_matrix(records: Iterable[dict], metric: str) -> dict[str, np.ndarray]:
    """Score: label -> [W] per-window means of `metric` (``miss`` for miss_rate)."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        if r["spec"]["kind"] == "score":
            groups[row_key(r)].append(r)
    name = "miss" if metric == "miss_rate" else metric
    out = {}
    for g in groups.values():
        g = sorted(g, key=lambda r: r["spec"].get("shard", 0))
        out[g[0]["config"]["label"]] = np.array([w[name] / w["n"] for r in g for w in r["windows"]])
    return out


def write_rows(rows: Sequence[dict], path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def read_rows(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]

"""Figures (matplotlib PNGs, headless ``Agg``) drawn from rows, Best-of-N curves and CALM points.

One function per figure; each returns the PNG path, or None when the run has no data for it:

- ``quality_vs_temperature.png``: accuracy against T per setting, 95% bands, greedy dashed;
- ``pareto.png``: quality (accuracy on the verifiable task) against diversity (embedding distance,
  or distinct-2, on the open-ended task) per setting along T, each family's Pareto front in bold,
  its hypervolume (area dominated above the worst point) in the legend;
- ``diversity_vs_temperature.png``: distinct-2 and embedding distance against T;
- ``best_of_n.png``: Best-of-N budget curves per family with bands, one panel per task/metric;
- ``kept_vs_temperature.png``: score's kept-set size against T (log scale);
- ``miss_vs_entropy.png``: score's truncation miss rate against the entropy of q;
- ``calm.png``: accuracy against collision, softmax temperature against CALM's N sweeps.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Sequence

__all__ = ["draw_all", "hypervolume"]


def _plt():
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from cycler import cycler

    c = plt.get_cmap("tab20").colors  # 20 distinct colours: the dark halves first, then the light ones
    plt.rcParams["axes.prop_cycle"] = cycler(color=c[::2] + c[1::2])
    return plt


def _save(fig, out: Path, name: str) -> str:
    p = out / name
    fig.tight_layout()
    fig.savefig(p, dpi=110)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return str(p)


def _settings(rows: Sequence[dict]) -> dict[str, list[dict]]:
    by = defaultdict(list)
    for r in rows:
        by[r["setting"]].append(r)
    return {k: sorted(v, key=lambda r: r["temperature"]) for k, v in sorted(by.items())}


def _ci(r: dict, m: str) -> tuple[float, float]:
    lo, hi = r.get(m + "_ci", [math.nan, math.nan])
    return lo, hi


def quality_vs_temperature(rows: Sequence[dict], out: Path, plt) -> str | None:
    gen = [r for r in rows if r["kind"] == "generate" and r.get("verifiable") and "accuracy" in r]
    tasks = sorted({r["task"] for r in gen})
    if not tasks:
        return None
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.2), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for setting, rs in _settings([r for r in gen if r["task"] == task]).items():
            if setting == "greedy":
                ax.axhline(rs[0]["accuracy"], color="k", ls="--", lw=1, label="greedy")
                continue
            T = [r["temperature"] for r in rs]
            ax.plot(T, [r["accuracy"] for r in rs], marker="o", label=setting)
            ax.fill_between(T, [_ci(r, "accuracy")[0] for r in rs], [_ci(r, "accuracy")[1] for r in rs], alpha=0.15)
        ax.set(title=f"{task}: accuracy vs temperature", xlabel="temperature", ylabel="accuracy", ylim=(-0.02, 1.02))
        ax.legend(fontsize=7)
    return _save(fig, out, "quality_vs_temperature.png")


def hypervolume(points: Sequence[tuple[float, float]], ref: tuple[float, float]) -> float:
    """Area dominated by `points` (maximise both coordinates) above the reference point."""
    pts = sorted((p for p in points if p[0] > ref[0] and p[1] > ref[1]), key=lambda p: -p[0])
    area, best_y = 0.0, ref[1]
    for x, y in pts:  # x falls; each new height adds the strip [ref_x, x] x [best_y, y]
        if y > best_y:
            area += (x - ref[0]) * (y - best_y)
            best_y = y
    return area


def _front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    return sorted(p for p in points if not any(q[0] >= p[0] and q[1] >= p[1] and q != p for q in points))


def pareto(rows: Sequence[dict], out: Path, plt) -> str | None:
    gen = [r for r in rows if r["kind"] == "generate"]
    ver = [r for r in gen if r.get("verifiable") and "accuracy" in r]
    opn = [r for r in gen if not r.get("verifiable")] or ver
    if not ver:
        return None
    qtask = sorted({r["task"] for r in ver})[0]
    dtask = sorted({r["task"] for r in opn})[0]
    dm = "embedding_distance" if all("embedding_distance" in r for r in opn) else "distinct_2"
    q = {r["label"]: r["accuracy"] for r in ver if r["task"] == qtask}
    d = {r["label"]: r[dm] for r in opn if r["task"] == dtask and dm in r}
    fam = defaultdict(list)
    for r in ver:
        if r["task"] == qtask and r["label"] in d:
            fam[r["sampler"]].append((d[r["label"]], q[r["label"]], r["setting"], r["temperature"]))
    if not fam:
        return None
    pts_all = [(x, y) for v in fam.values() for x, y, _, _ in v]
    ref = (min(p[0] for p in pts_all), 0.0)
    fig, ax = plt.subplots(figsize=(7, 5))
    for f, pts in sorted(fam.items()):
        by = defaultdict(list)
        for x, y, s, T in pts:
            by[s].append((T, x, y))
        color = None
        for s, v in sorted(by.items()):
            v.sort()
            line, = ax.plot([p[1] for p in v], [p[2] for p in v], marker="o", ms=3, lw=0.8, alpha=0.6,
                            color=color)
            color = line.get_color()
        fr = _front([(x, y) for x, y, _, _ in pts])
        hv = hypervolume(fr, ref)
        ax.plot([p[0] for p in fr], [p[1] for p in fr], lw=2.5, color=color, label=f"{f} (HV {hv:.3f})")
    ax.set(title=f"quality ({qtask} accuracy) vs diversity ({dtask} {dm})", xlabel=dm, ylabel="accuracy")
    ax.legend(fontsize=7)
    return _save(fig, out, "pareto.png")


def diversity_vs_temperature(rows: Sequence[dict], out: Path, plt) -> str | None:
    gen = [r for r in rows if r["kind"] == "generate" and not r.get("verifiable")] or \
          [r for r in rows if r["kind"] == "generate"]
    if not gen:
        return None
    task = sorted({r["task"] for r in gen})[0]
    metrics = [m for m in ("distinct_2", "embedding_distance") if any(m in r for r in gen)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4.2), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        for setting, rs in _settings([r for r in gen if r["task"] == task and m in r]).items():
            if setting == "greedy":
                ax.axhline(rs[0][m], color="k", ls="--", lw=1, label="greedy")
                continue
            T = [r["temperature"] for r in rs]
            ax.plot(T, [r[m] for r in rs], marker="o", label=setting)
            ax.fill_between(T, [_ci(r, m)[0] for r in rs], [_ci(r, m)[1] for r in rs], alpha=0.15)
        ax.set(title=f"{task}: {m} vs temperature", xlabel="temperature", ylabel=m)
        ax.legend(fontsize=7)
    return _save(fig, out, "diversity_vs_temperature.png")


def best_of_n(curves: Sequence[dict], out: Path, plt) -> str | None:
    panels = sorted({(c["task"], c["metric"]) for c in curves if not c["greedy"]})
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, (task, metric) in zip(axes[0], panels):
        for c in curves:
            if (c["task"], c["metric"]) != (task, metric):
                continue
            if c["greedy"]:
                ax.axhline(float(c["matrix"].mean()), color="k", ls="--", lw=1, label="greedy")
                continue
            cv = c["curve"]
            ax.plot(cv["n"], cv["mean"], marker=".", label=f"{c['sampler']} ({len(c['configs'])} configs)")
            ax.fill_between(cv["n"], cv["lo"], cv["hi"], alpha=0.15)
        nmax = max((len(c["configs"]) for c in curves if (c["task"], c["metric"]) == (task, metric)), default=1)
        ax.set(title=f"Best-of-N: {task} {metric}", xlabel="N configurations tried", ylabel=f"best {metric}",
               xscale="log" if nmax >= 10 else "linear")
        ax.legend(fontsize=7)
    return _save(fig, out, "best_of_n.png")


def kept_vs_temperature(rows: Sequence[dict], out: Path, plt) -> str | None:
    sc = [r for r in rows if r["kind"] == "score" and r["sampler"] != "greedy"]
    if not sc:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for setting, rs in _settings(sc).items():
        ax.plot([r["temperature"] for r in rs], [r["kept_size"] for r in rs], marker="o", ms=3, label=setting)
    ax.set(title="kept-set size vs temperature (score)", xlabel="temperature", ylabel="mean kept tokens",
           xscale="log", yscale="log")
    ax.legend(fontsize=6, ncol=2)
    return _save(fig, out, "kept_vs_temperature.png")


def miss_vs_entropy(rows: Sequence[dict], out: Path, plt) -> str | None:
    sc = [r for r in rows if r["kind"] == "score"]
    if not sc:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for setting, rs in _settings(sc).items():
        ax.plot([r["entropy"] for r in rs], [r["miss_rate"] for r in rs], marker="o", ms=3, label=setting)
    ax.set(title="truncation miss rate vs entropy of q (score)", xlabel="entropy of q (bits)",
           ylabel="P(q(y) = 0)")
    ax.legend(fontsize=6, ncol=2)
    return _save(fig, out, "miss_vs_entropy.png")


def calm(points: dict | None, out: Path, plt) -> str | None:
    if not points or not points.get("points"):
        return None
    panels = (("n1", "n = 1 (exact)"), ("gm", "n = 1..4 geometric mean (approx.)"))
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, (key, title) in zip(axes, panels):
        a, c = f"accuracy_{key}", f"collision_{key}"
        soft = sorted((p for p in points["points"] if p["method"] == "softmax"), key=lambda p: p["T"])
        if soft:
            ax.plot([p[c] for p in soft], [p[a] for p in soft], "k-o", ms=4, label="softmax T")
            for p in soft:
                ax.annotate(f"T={p['T']:.2g}", (p[c], p[a]), fontsize=6)
        for T in sorted({p["T"] for p in points["points"] if p["method"] == "calm"}):
            cs = sorted((p for p in points["points"] if p["method"] == "calm" and p["T"] == T), key=lambda p: p["N"])
            ax.plot([p[c] for p in cs], [p[a] for p in cs], marker="s", ms=4, label=f"CALM batch, T = 1/{round(1 / T)}")
            for p in cs:
                ax.annotate(f"N={p['N']}", (p[c], p[a]), fontsize=6)
        ax.set(title=f"CALM accuracy vs collision: {title}", xlabel="collision rate", ylabel="accuracy")
        ax.legend(fontsize=7)
    return _save(fig, out, "calm.png")


def draw_all(rows: Sequence[dict], curves: Sequence[dict], out: str | Path, calm_points: dict | None = None
             ) -> dict[str, str]:
    """Every figure the data allows; name -> PNG path. Needs matplotlib (the eval extra)."""
    plt = _plt()
    if plt is None:
        return {}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figs = {"quality_vs_temperature": quality_vs_temperature(rows, out, plt),
            "pareto": pareto(rows, out, plt),
            "diversity_vs_temperature": diversity_vs_temperature(rows, out, plt),
            "best_of_n": best_of_n(curves, out, plt),
            "kept_vs_temperature": kept_vs_temperature(rows, out, plt),
            "miss_vs_entropy": miss_vs_entropy(rows, out, plt),
            "calm": calm(calm_points, out, plt)}
    return {k: v for k, v in figs.items() if v}

"""The report: rebuilt from the cell files of a run folder alone, as files a user can open or plot.

`build_report(OUT)` reads ``OUT/cells/*.json`` (and ``OUT/calm.json`` when `temperance eval calm`
ran) and writes, into OUT:

- ``rows.jsonl``: one line per (task, configuration) with every metric, its interval,
  ``n_prompts`` and ``n_samples`` (see `temperance.eval.rows`);
- ``comparisons.jsonl``: the paired tests, Holm-adjusted; ``best_of_n.json``: the budget curves;
- ``trends.json`` and ``summary.md``: the issue's claims with their numbers and verdicts;
- the figures (``*.png``) and ``report.html``: one self-contained page (figures inline as base64,
  the trends, the table of rows, a collapsible gallery of samples per configuration).

Nothing is recomputed from the model: delete the report files and rerun to get them back.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any, Sequence

from .cells import Store
from .figures import draw_all
from .protocol import best_of_n_curves, comparisons, trends
from .rows import build_rows, write_rows

__all__ = ["build_report"]

TABLE_METRICS = ("accuracy", "brier", "collision", "miss_rate", "kept_size", "entropy", "nll", "judge_nll", "distinct_2",
                 "self_bleu", "compression_ratio", "embedding_distance", "similar", "distinct_k",
                 "utility_k", "slop")


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items() if k != "matrix"}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if hasattr(x, "tolist"):
        return _jsonable(x.tolist())
    return x


def build_report(out: str | Path, *, title: str = "temperance eval", gallery: int = 2) -> dict:
    """Write rows, tests, curves, trends, figures and report.html into `out`; return the paths."""
    out = Path(out)
    records = Store(out).read_all()
    rows = build_rows(records)
    write_rows(rows, out / "rows.jsonl")
    comps = comparisons(records, rows)
    with open(out / "comparisons.jsonl", "w") as f:
        for c in comps:
            f.write(json.dumps(_jsonable(c)) + "\n")
    curves = best_of_n_curves(records, rows)
    (out / "best_of_n.json").write_text(json.dumps(_jsonable(curves), indent=1))
    calm_path = out / "calm.json"
    calm = json.loads(calm_path.read_text()) if calm_path.is_file() else None
    tr = trends(rows, comps, curves, calm)
    (out / "trends.json").write_text(json.dumps(_jsonable(tr), indent=1))
    figs = draw_all(rows, curves, out, calm)
    (out / "summary.md").write_text(_summary(tr, rows))
    page = _html(title, rows, tr, figs, records, comps, gallery)
    (out / "report.html").write_text(page, encoding="utf-8")
    return {"rows": str(out / "rows.jsonl"), "report": str(out / "report.html"), "figures": figs,
            "trends": tr, "n_rows": len(rows)}


# -- text ----------------------------------------------------------------------------------------


def _f(x: Any, nd: int = 3) -> str:
    if isinstance(x, float):
        return "–" if not math.isfinite(x) else f"{x:.{nd}g}" if abs(x) >= 1000 else f"{x:.{nd}f}"
    return str(x)


def _p(p: float) -> str:
    """A bootstrap p-value: 0 means below the resolution 1/B."""
    from .stats import B
    return f"<{1 / B:.4f}" if p == 0 else _f(p)


def _trend_lines(name: str, t: dict) -> list[str]:
    lines = [f"### {name}: {t['verdict']}", "", f"Claim: {t['claim']}", "", t.get("details", ""), ""]
    if name == "collapse" and "table" in t:
        lines.append(f"greedy accuracy on {t['task']}: {_f(t['greedy'])} [{_f(t['greedy_ci'][0])}, {_f(t['greedy_ci'][1])}]")
        for r in t["table"]:
            lines.append(f"- {r['setting']} T={r['T']:g}: {_f(r['accuracy'])} [{_f(r['ci'][0])}, {_f(r['ci'][1])}]"
                         f" ({_f(r['share_of_greedy'], 2)} of greedy)")
        for c in t.get("tests", []):
            lines.append(f"- paired: {c['a']} − {c['b']}: {_f(c['diff'])} [{_f(c['lo'])}, {_f(c['hi'])}], "
                         f"p={_p(c['p'])}, Holm p={_p(c['p_holm'])}")
    elif name == "invariance" and "table" in t:
        for r in t["table"] + t.get("contrast", []):
            lines.append(f"- {r['setting']} at T={r['temperatures']}: identical kept sets: {r['identical']}; "
                         f"mean kept {[round(k, 2) for k in r['kept_size']]}")
    elif name == "best_of_n" and "table" in t:
        for r in t["table"]:
            a, b = r["gap_n1"], r["gap_nmax"]
            lines.append(f"- {r['task']} {r['metric']}: gap at N=1 {_f(a['gap'])} [{_f(a['lo'])}, {_f(a['hi'])}]"
                         f" → at N={b['n']} {_f(b['gap'])} [{_f(b['lo'])}, {_f(b['hi'])}]")
    elif name == "diversity" and "table" in t:
        for r in t["table"]:
            vals = ", ".join(f"{T:g}:{_f(v)}" for T, v in zip(r["T"], r["values"]))
            lines.append(f"- {r['task']} {r['setting']} {r['metric']}: {vals} (ρ={_f(r['spearman'], 2)})")
    elif name == "calm" and "table" in t:
        for r in t["table"]:
            lines.append(f"- {r}")
    lines.append("")
    return lines


def _summary(tr: dict, rows: Sequence[dict]) -> str:
    lines = ["# temperance eval: trends", ""]
    for name, t in tr.items():
        lines += _trend_lines(name, t)
    lines.append(f"{len(rows)} rows; see rows.jsonl.")
    return "\n".join(lines) + "\n"


# -- html ----------------------------------------------------------------------------------------

CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px;color:#222}
h1{font-size:1.5em} h2{margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:12px} td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}
th{background:#f3f3f3;position:sticky;top:0} td.l{text-align:left}
.fig img{max-width:100%;border:1px solid #eee;margin:6px 0}
.verdict{font-weight:bold} .reproduced{color:#176c17} .not{color:#a11}
details{margin:4px 0} pre{white-space:pre-wrap;background:#f7f7f7;padding:4px;margin:2px 0;font-size:12px}
"""


def _img(path: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    name = html.escape(Path(path).stem)
    return f'<div class="fig"><h3>{name}</h3><img alt="{name}" src="data:image/png;base64,{data}"></div>'


def _table(rows: Sequence[dict]) -> str:
    cols = [m for m in TABLE_METRICS if any(m in r for r in rows)]
    head = "".join(f"<th>{c}</th>" for c in ["task", "sampler", "label"] + cols + ["n_prompts", "n_samples"])
    body = []
    for r in rows:
        cells = [f'<td class="l">{html.escape(str(r[k]))}</td>' for k in ("task", "sampler", "label")]
        for c in cols:
            if c in r:
                lo, hi = r.get(c + "_ci", [math.nan, math.nan])
                cells.append(f'<td title="95% CI [{_f(lo)}, {_f(hi)}]">{_f(r[c])}</td>')
            else:
                cells.append("<td></td>")
        cells += [f"<td>{r['n_prompts']}</td>", f"<td>{r['n_samples']}</td>"]
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _gallery(records: Sequence[dict], per_config: int) -> str:
    parts = []
    gen = sorted((r for r in records if r["spec"]["kind"] == "generate" and r["spec"]["seed_block"] == 0),
                 key=lambda r: (r["spec"]["task"], r["config"]["sampler"], r["config"]["label"]))
    for r in gen:
        inner = []
        for p in r["prompts"][:per_config]:
            samples = "".join(
                f"<pre>{html.escape(s['text'])}{' ✓' if s.get('correct') else ''}</pre>" for s in p["samples"])
            inner.append(f"<p><b>{html.escape(p['prompt'])}</b></p>{samples}")
        parts.append(f"<details><summary>{html.escape(r['spec']['task'])} · {html.escape(r['config']['label'])}"
                     f"</summary>{''.join(inner)}</details>")
    return "".join(parts) or "<p>no generation cells</p>"


def _html(title: str, rows, tr: dict, figs: dict, records, comps, gallery: int) -> str:
    trend_html = []
    for name, t in tr.items():
        cls = "reproduced" if t["verdict"] == "reproduced" else "not" if t["verdict"].startswith("not") else ""
        detail = "\n".join(_trend_lines(name, t)[4:])
        trend_html.append(f'<p><span class="verdict {cls}">{html.escape(name)}: {html.escape(t["verdict"])}</span>'
                          f" — {html.escape(t['claim'])}</p><pre>{html.escape(detail)}</pre>")
    sig = [c for c in comps if c.get("p_holm") is not None and c["p_holm"] < 0.05]
    comp_html = "".join(f"<li>{html.escape(c['task'])} T={c['temperature']:g}: {html.escape(c['a'])} − "
                        f"{html.escape(c['b'])} = {_f(c['diff'])} [{_f(c['lo'])}, {_f(c['hi'])}], Holm p={_p(c['p_holm'])}</li>"
                        for c in sig[:60])
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<h2>Trends</h2>{''.join(trend_html)}"
            f"<h2>Figures</h2>{''.join(_img(p) for p in figs.values())}"
            f"<h2>Significant paired differences (Holm p &lt; 0.05; {len(sig)} of {len(comps)})</h2><ul>{comp_html}</ul>"
            f"<h2>Rows ({len(rows)})</h2>{_table(rows)}"
            f"<h2>Samples</h2>{_gallery(records, gallery)}</body></html>")

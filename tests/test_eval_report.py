"""`temperance eval` end to end on a tiny model: the CLI, the report rebuilt from cells alone, and the
HTML report in headless chromium (its figures render)."""

import json
import os
import shutil
from pathlib import Path

import pytest

from eval_helpers import tiny_model_dir
from temperance.cli import main


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    model = tiny_model_dir(root)
    out = root / "out"
    text = root / "text.txt"
    text.write_text(("The lighthouse keeper found a letter in the sand. " * 8 + "\n\n\n") * 3)
    base = ["--model", model, "--workers", "0", "--out", str(out)]
    assert main(["eval", "score", *base, "--text", str(text), "--positions", "96", "--window", "32",
                 "--configs", "; min_p=0.1; top_n_sigma=1; top_p=0.9; temperature=0",
                 "--temperatures", "0.1,1,10", "--no-report"]) == 0
    assert main(["eval", "generate", *base, "--tasks", "easy,stories", "--limit", "3", "--samples", "2",
                 "--max-tokens", "4", "--configs", "; top_p=0.9; min_p=0.1; top_n_sigma=1; temperature=0",
                 "--temperatures", "1,2", "--no-embeddings", "--chat"]) == 0
    return out, model


def test_rows_and_report_files(run):
    out, _ = run
    for f in ("rows.jsonl", "comparisons.jsonl", "best_of_n.json", "trends.json", "summary.md", "report.html",
              "quality_vs_temperature.png", "best_of_n.png", "kept_vs_temperature.png"):
        assert (out / f).is_file(), f
    rows = [json.loads(x) for x in (out / "rows.jsonl").read_text().splitlines()]
    score = [r for r in rows if r["kind"] == "score"]
    gen = [r for r in rows if r["kind"] == "generate"]
    assert len(score) == 4 * 3 + 1 and len(gen) == 2 * (4 * 2 + 1)
    r = next(r for r in gen if r["task"] == "easy" and r["label"] == "min_p=0.1 T=2")
    assert {"sampler", "params", "temperature", "accuracy", "accuracy_ci", "n_prompts", "n_samples"} <= set(r)
    assert r["sampler"] == "min_p" and r["n_prompts"] == 3 and r["n_samples"] == 2
    s = next(r for r in score if r["label"] == "top_n_sigma=1 T=10")
    assert "kept_size" in s and s["n_samples"] == 96
    tr = json.loads((out / "trends.json").read_text())
    assert tr["invariance"]["verdict"] == "reproduced"       # exact: holds for any model
    assert set(tr) == {"collapse", "invariance", "best_of_n", "diversity", "calm"}


def test_report_is_rebuilt_from_cells_alone(run):
    out, _ = run
    before = (out / "rows.jsonl").read_text()
    for f in ("rows.jsonl", "report.html", "trends.json"):
        (out / f).unlink()
    assert main(["eval", "report", str(out)]) == 0
    assert (out / "rows.jsonl").read_text() == before and (out / "report.html").is_file()


def test_rerun_skips_finished_cells(run, capsys):
    out, model = run
    capsys.readouterr()
    assert main(["eval", "generate", "--model", model, "--workers", "0", "--out", str(out), "--tasks", "easy",
                 "--limit", "3", "--samples", "2", "--max-tokens", "4", "--configs", "temperature=0",
                 "--no-embeddings", "--chat", "--no-report"]) == 0
    assert "1 already done, 0 to run" in capsys.readouterr().out


@pytest.mark.parametrize("argv, needle", [
    (["eval", "score", "--configs", "top_p=2"], "top_p must be in"),
    (["eval", "score", "--chat"], "--chat has no meaning"),
    (["eval", "generate", "--temp", "1"], "--temperatures"),
    (["eval", "generate", "--configs", "seed=3"], "may not set seed"),
    (["eval", "generate", "--samples", "0"], "--samples must be"),
    (["eval", "generate", "--tasks", "nope"], "unknown task"),
    (["eval", "report", "/nonexistent/run"], "has no cells"),
    (["eval", "generate", "--judge", "no-such-model"], "unknown model 'no-such-model'"),
    (["eval", "generate", "--judge", "/nonexistent/judge"], "no model directory or .gguf file"),
])
def test_bad_input_is_one_line(run, argv, needle, capsys):
    _, model = run
    extra = ["--model", model, "--workers", "0", "--out", "/tmp/never-written"] if argv[1] != "report" else []
    assert main(argv + extra) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


@pytest.mark.slow
def test_report_renders_in_chromium(run):
    sync_api = pytest.importorskip("playwright.sync_api")
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian chromium is not installed (apt-get install -y chromium)")
    out, _ = run
    errors = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto((out / "report.html").resolve().as_uri())
        imgs = page.locator(".fig img")
        n = imgs.count()
        pngs = len(list(out.glob("*.png")))
        assert n == pngs >= 5
        widths = page.evaluate("() => [...document.querySelectorAll('.fig img')].map(i => "
                               "i.complete ? i.naturalWidth : 0)")
        assert all(w > 100 for w in widths), widths             # every figure decoded and drawn
        assert page.locator("details").count() >= 14           # the sample gallery, one per config
        page.locator("details summary").first.click()
        assert page.locator("details pre").first.is_visible()
        art = Path(__file__).resolve().parents[1] / "artifacts"
        art.mkdir(exist_ok=True)
        page.screenshot(path=str(art / "eval-report.png"), full_page=True)
        browser.close()
    assert not errors, errors
    assert shutil.disk_usage(out).free > 0


def test_judge_in_a_score_grid_is_an_error(run, tmp_path, capsys):
    _, model = run
    grid = tmp_path / "g.yaml"
    grid.write_text("judge: gemma3-270m\nconfigs: [{}]\n")
    assert main(["eval", "score", "--grid", str(grid), "--model", model, "--workers", "0",
                 "--out", str(tmp_path / "out")]) == 2
    assert "judge has no meaning for eval score" in capsys.readouterr().err

"""Generation cells: common random numbers, the records, content-hash ids, resume, worker processes."""

import json
import os
import subprocess
import sys
import time

import pytest

from eval_helpers import tiny_model_dir, tiny_runtime
from temperance.eval import cells, data, grid, plan
from temperance.eval.generate import run_generate_cell, seed_for
from temperance.eval.rows import build_rows

TASK = data.load_task("easy").head(3)


def _run(params, **kw):
    kw = {"samples": 3, "max_tokens": 5, "chat": True, "seed_block": 0, "embeddings": False, **kw}
    return run_generate_cell(tiny_runtime(), TASK, params, **kw)


def _texts(recs):
    return [[s["text"] for s in r["samples"]] for r in recs]


def test_common_random_numbers():
    pure, = grid.expand([{}], [1.0])
    same, = grid.expand([{"min_p": 1e-9}], [1.0])      # keeps every token here: the same distribution
    a, b = _run(pure.params), _run(same.params)
    assert _texts(a) == _texts(b)                       # paired: same seeds per (prompt, sample)
    assert _texts(a) == _texts(_run(pure.params))       # reproducible
    assert any(len(set(t)) > 1 for t in _texts(a))      # samples of a prompt have their own seeds
    assert _texts(_run(pure.params, seed_block=1)) != _texts(a)
    hot, = grid.expand([{}], [3.0])
    assert _texts(_run(hot.params)) != _texts(a)


def test_records_hold_metrics_and_samples():
    greedy, = grid.expand([{"temperature": 0}], [])
    recs = _run(greedy.params)
    assert [r["id"] for r in recs] == [i.id for i in TASK.items]
    r = recs[0]
    assert set(r["metrics"]) >= {"accuracy", "nll", "distinct_1", "self_bleu", "compression_ratio",
                                 "distinct_k", "utility_k", "slop", "tokens"}
    assert len(set(_texts(recs)[0])) == 1 and r["metrics"]["distinct_k"] == 1.0   # greedy: one class
    s = r["samples"][0]
    assert s["tokens"] == 5 and s["finish"] in ("length", "stop") and s["correct"] in (True, False)
    assert r["metrics"]["accuracy"] == sum(x["correct"] for x in r["samples"]) / 3
    assert s["nll"] > 0


def test_seeds_are_keyed_by_prompt_not_position():
    assert seed_for(7, 0, TASK.items[1].id) == seed_for(7, 0, data.Item(TASK.items[1].prompt).id)
    assert seed_for(7, 0, "a") != seed_for(8, 0, "a")


def test_plan_resume_and_rows(tmp_path):
    rt = tiny_runtime()
    cells.register_runtime("tiny", rt)
    store = cells.Store(tmp_path)
    cfgs = grid.expand(grid.parse_configs("; top_k=5"), [1.0, 2.0])
    kw = dict(samples=2, max_tokens=3, chat=False, seeds=2, store=store, embeddings=False)
    jobs, total = plan.plan_generate("tiny", [TASK], cfgs, **kw)
    assert total == len(jobs) == 8 and len({j["cell"]["id"] for j in jobs}) == 8
    assert cells.run_jobs(jobs, store, workers=0, progress=False) == 8
    again, total = plan.plan_generate("tiny", [TASK], cfgs, **kw)
    assert again == [] and total == 8                     # a rerun skips every finished cell
    victim = jobs[3]["cell"]["id"]
    store.path(victim).unlink()
    again, _ = plan.plan_generate("tiny", [TASK], cfgs, **kw)
    assert [j["cell"]["id"] for j in again] == [victim]
    bigger, total = plan.plan_generate("tiny", [TASK], cfgs, **{**kw, "max_tokens": 4})
    assert total == len(bigger) == 8                      # another setting: new ids
    cells.run_jobs(again, store, workers=0, progress=False)
    rows = build_rows(store.read_all())
    assert len(rows) == 4 and all(r["n_prompts"] == 3 and r["n_samples"] == 4 for r in rows)
    assert {r["label"] for r in rows} == {"pure T=1", "pure T=2", "top_k=5 T=1", "top_k=5 T=2"}
    r = rows[0]
    assert r["accuracy_ci"][0] <= r["accuracy"] <= r["accuracy_ci"][1] and "corpus_distinct_2" in r
    assert r["params"]["samplers"] == list(grid.TEMPERATURE_FIRST)


def test_worker_processes_give_the_same_cells(tmp_path):
    d = tiny_model_dir(tmp_path)
    cfgs = grid.expand([{}], [1.0])
    jobs, _ = plan.plan_generate(d, [TASK], cfgs, samples=2, max_tokens=3, chat=False, seeds=1,
                                 embeddings=False)
    a, b = cells.Store(tmp_path / "a"), cells.Store(tmp_path / "b")
    cells.run_jobs([dict(j) for j in jobs], a, workers=1, progress=False)     # a spawned process
    from temperance import models
    cells.register_runtime(d, models.load(d, threads=1))
    cells.run_jobs([dict(j) for j in jobs], b, workers=0, progress=False)
    ra, rb = a.read_all(), b.read_all()
    assert len(ra) == 1 and _texts(ra[0]["prompts"]) == _texts(rb[0]["prompts"])
    assert json.loads(a.path(jobs[0]["cell"]["id"]).read_text())["spec"]["model"] == d


_ORPHAN = """
import os, sys, time, multiprocessing as mp
from temperance.eval.cells import _init_worker

def child(parent, ready):
    _init_worker(1, parent)
    open(ready, "w").close()
    time.sleep(120)

if __name__ == "__main__":
    p = mp.get_context("spawn").Process(target=child, args=(os.getpid(), sys.argv[1]))
    p.start()
    print(p.pid, flush=True)
    time.sleep(120)
"""


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs Linux /proc")
def test_a_local_worker_exits_when_its_parent_is_killed(tmp_path):
    """A killed `temperance eval` (SIGKILL / SIGTERM: no chance to stop its pool) leaves no worker
    computing cells that nobody collects."""
    script = tmp_path / "orphan.py"
    script.write_text(_ORPHAN)
    ready = tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, str(script), str(ready)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    pid = int(proc.stdout.readline())
    deadline = time.time() + 60
    while not ready.exists() and time.time() < deadline:
        time.sleep(0.1)
    assert ready.exists() and _running(pid)  # the worker is set up and waiting
    proc.kill()
    proc.wait()
    deadline = time.time() + 30
    while _running(pid) and time.time() < deadline:
        time.sleep(0.2)
    assert not _running(pid)


def test_cell_ids_are_content_hashes():
    assert cells.cell_id({"a": 1, "b": [1, 2]}) == cells.cell_id({"b": [1, 2], "a": 1})
    assert cells.cell_id({"a": 1}) != cells.cell_id({"a": 2})
    with pytest.raises(Exception, match="unknown job kind"):
        cells.register_runtime("x", tiny_runtime())
        cells.execute({"kind": "nope", "model": "x"})


def test_judge_nll_is_the_teacher_forced_nll_under_a_second_model():
    import torch

    from temperance.eval.generate import judge_nll

    rt = tiny_runtime()
    greedy, = grid.expand([{"temperature": 0}], [])
    recs = _run(greedy.params, judge=rt)          # the model as its own judge
    r = recs[0]
    s = r["samples"][0]
    assert r["metrics"]["judge_nll"] == pytest.approx(judge_nll(rt, TASK.items[0].prompt, s["text"], True))
    ctx = rt.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}])
    cont = rt.tokenizer.encode("ab", add_special_tokens=False)
    lp = torch.log_softmax(rt.model(input_ids=torch.tensor([ctx + cont])).logits[0].double(), -1)
    want = -sum(lp[len(ctx) - 1 + i, t].item() for i, t in enumerate(cont)) / len(cont)
    assert judge_nll(rt, "hi", "ab", True) == pytest.approx(want)


def test_a_base_model_judge_reads_the_plain_prompt_in_a_chat_run():
    """A judge without a chat template (Gemma-3-270m base, say) scores the text after the plain
    prompt, also in a --chat run, instead of failing the cell."""
    import torch

    from temperance.eval.generate import judge_nll

    from conftest_runtime_helpers import hf_tokenizer, tiny_llama
    from temperance.runtime.hf import HFRuntime

    tok = hf_tokenizer()
    tok.chat_template = None                      # (a fresh tokenizer: tiny_runtime() is shared)
    rt = HFRuntime(tiny_llama(vocab_size=len(tok), max_position_embeddings=512), tok)
    assert not rt.tokenizer.has_chat_template
    ctx = rt.tokenizer.encode("hi")
    cont = rt.tokenizer.encode("ab", add_special_tokens=False)
    lp = torch.log_softmax(rt.model(input_ids=torch.tensor([ctx + cont])).logits[0].double(), -1)
    want = -sum(lp[len(ctx) - 1 + i, t].item() for i, t in enumerate(cont)) / len(cont)
    assert judge_nll(rt, "hi", "ab", True) == pytest.approx(want)
    assert judge_nll(rt, "hi", "ab", False) == pytest.approx(want)

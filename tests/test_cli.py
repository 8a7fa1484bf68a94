"""The `temperance` command line: bad input (fast) and the real model (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from conftest_runtime_helpers import smollm2_runtime
from temperance import cli, models

torch.set_num_threads(1)


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv, message", [
    (["generate", "--model", "no-such-model", "hi"], "unknown model"),
    (["generate", "--top-p", "1.5", "hi"], "top_p"),
    (["generate", "--samplers", "foo", "hi"], "unknown sampler"),
    (["generate", ""], "empty"),
    (["generate"], "no prompt"),
    (["generate", "--file", "/no/such/file.txt"], "No such file"),
    (["generate", "--preset", "nope", "hi"], "preset"),
    (["inspect", "--samplers", "foo", "--demo"], "unknown sampler"),
    (["inspect"], "--demo or --prompt"),
])
def test_bad_input_is_one_line_exit_2(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("temperance: error:") and message in err
    assert "Traceback" not in err


def test_bad_input_no_traceback_in_a_real_process():
    r = subprocess.run([sys.executable, "-m", "temperance", "generate", "--model", "nope", "hi"],
                       capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2 and "Traceback" not in r.stderr and "unknown model" in r.stderr


def test_inspect_demo_still_works(capsys):
    code, out, _ = run(capsys, "inspect", "--demo", "--min-p", "0.1", "--temp", "3")
    assert code == 0 and "min_p → temperature → pick" in out and "' mat'" in out
    assert "(990 others)" in out


def test_models_lists(capsys):
    code, out, _ = run(capsys, "models")
    assert code == 0 and "smollm2" in out and "gemma3-270m" in out


@pytest.fixture()
def real(monkeypatch):
    """`--model smollm2` served by the session's one loaded runtime (no reload per test)."""
    rt, real_load = smollm2_runtime(), models.load
    monkeypatch.setattr(models, "load", lambda name="smollm2", threads=None, **kw:
                        rt if name == "smollm2" else real_load(name, threads, **kw))


@pytest.mark.slow
def test_generate_prints_text(capsys, real):
    code, out, _ = run(capsys, "generate", "--temp", "0", "--max-tokens", "8", "Once upon a time")
    assert code == 0 and len(out.strip()) > 0


@pytest.mark.slow
def test_generate_json(capsys, real):
    code, out, _ = run(capsys, "generate", "--json", "-n", "2", "--seed", "1", "--max-tokens", "6",
                       "--min-p", "0.05", "Once upon a time")
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(rows) == 2 and [r["sample"] for r in rows] == [0, 1]
    for r in rows:
        assert len(r["tokens"]) == len(r["logprobs"]) <= 6 and r["finish_reason"] in ("stop", "length")
        assert r["params"]["min_p"] == 0.05 and r["params"]["seed"] == 1


@pytest.mark.slow
def test_generate_stop_and_chat(capsys, real):
    code, out, _ = run(capsys, "generate", "--temp", "0", "--max-tokens", "20", "--chat", "--json",
                       "--stop", ".", "What is the capital of France? Answer in one sentence.")
    row = json.loads(out)
    assert code == 0 and "." not in row["text"]


@pytest.mark.slow
def test_inspect_prompt(capsys, real):
    code, out, _ = run(capsys, "inspect", "--prompt", "The capital of France is", "--top-k", "5",
                       "--steps", "2", "--temp", "0")
    assert code == 0 and "' Paris'" in out and "entropy (bits)" in out and "(step 2)" in out

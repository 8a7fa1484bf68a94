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


@pytest.fixture()
def tiny(monkeypatch):
    """`generate` on a tiny random Llama with a ChatML tokenizer (EOS = 2, <|im_end|>): fast."""
    from conftest_runtime_helpers import hf_tokenizer, tiny_llama
    from temperance.runtime.hf import HFRuntime
    rt = HFRuntime(tiny_llama(vocab_size=262, eos_token_id=2), hf_tokenizer())
    monkeypatch.setattr(models, "load", lambda name="smollm2", threads=None, **kw: rt)
    return rt


def test_generate_says_when_the_model_ends_at_once(capsys, tiny):
    code, out, err = run(capsys, "generate", "--temp", "0", "--logit-bias", "2+50", "hello")
    assert code == 0 and out == "\n"
    assert err == ("temperance: the model ended at once (its first token was end-of-sequence); "
                   "--chat applies the chat template for instruct models\n")
    code, out, err = run(capsys, "generate", "--chat", "--temp", "0", "--logit-bias", "2+50", "hello")
    assert code == 0 and err.count("\n") == 1 and "ended at once" in err and "--chat" not in err


def test_generate_says_when_it_stopped_at_max_tokens(capsys, tiny):
    code, out, err = run(capsys, "generate", "--temp", "0", "--logit-bias", "2-inf", "--max-tokens", "3",
                         "hello")
    assert code == 0 and out.strip()
    assert err == "temperance: stopped at the limit of --max-tokens 3 (finish reason: length)\n"
    code, out, err = run(capsys, "generate", "--json", "-n", "2", "--seed", "1", "--logit-bias", "2-inf",
                         "--max-tokens", "3", "hello")
    rows = [json.loads(line) for line in out.splitlines()]        # stdout: JSON only
    assert code == 0 and [r["finish_reason"] for r in rows] == ["length", "length"]
    assert err.splitlines() == [f"temperance: prompt 0, sample {s}: stopped at the limit of --max-tokens 3 "
                                "(finish reason: length)" for s in (0, 1)]


def test_beams_say_when_they_stopped_at_max_tokens(capsys, tiny):
    # beam sampling (it runs the chain, so the EOS ban applies): every beam runs to the limit
    code, out, err = run(capsys, "generate", "--beams", "2", "--num-return-sequences", "2", "--beam-sample",
                         "--seed", "1", "--logit-bias", "2-inf", "--max-tokens", "3", "hello")
    assert code == 0 and "(length) ---" in out
    assert err.splitlines() == [f"temperance: prompt 0, sample {s}: stopped at the limit of --max-tokens 3 "
                                "(finish reason: length)" for s in (0, 1)]
    code, out, err = run(capsys, "generate", "--beams", "2", "--beam-sample", "--seed", "1", "--json",
                         "--logit-bias", "2-inf", "--max-tokens", "3", "hello")
    assert code == 0 and json.loads(out)["finish_reason"] == "length"
    assert err == "temperance: stopped at the limit of --max-tokens 3 (finish reason: length)\n"


def test_generate_no_notice_when_the_model_stops(capsys, tiny):
    stop = tiny.tokenizer.token_texts()[100]                       # token 100 is forced, then stops
    code, out, err = run(capsys, "generate", "--temp", "0", "--max-tokens", "3", "--logit-bias", "2-inf",
                         "--logit-bias", "100+50", "--stop", stop, "hello")
    assert code == 0 and err == "" and out == "\n"


@pytest.mark.slow
def test_generate_instruct_without_chat_explains_empty_output(capsys, real):
    """The issue as a user hit it: SmolLM2-Instruct ends at once without its chat template."""
    code, out, err = run(capsys, "generate", "--temp", "0", "Write one sentence about the sea.")
    assert code == 0 and out == "\n" and "ended at once" in err and "--chat" in err

"""vLLM's OpenAI-compatible server started with our processor (bound to 127.0.0.1, stopped at the
end): a bad knob in `vllm_xargs` is an HTTP 400 naming it, good knobs are a 200, and they act
(a ban changes the greedy completion)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

pytest.importorskip("vllm")

START_TIMEOUT_S = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir,
           "--served-model-name", "smollm2", "--host", "127.0.0.1", "--port", str(port),
           "--dtype", "float32", "--enforce-eager", "--max-model-len", "512",
           "--generation-config", "vllm", "--logits-processors", "temperance.vllm:LogitsProcessor"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vLLM server not up in {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its engine process
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def post(base: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(base + "/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def completion(prompt: str = "The capital of France is", **kw) -> dict:
    return {"model": "smollm2", "prompt": prompt, "max_tokens": 6, **kw}


def test_bad_knob_is_400_naming_it(server):
    status, body = post(server, completion(vllm_xargs={"temperance": json.dumps({"top_n_sigma": 1, "min_p": 7})}))
    assert status == 400, body
    assert "min_p must be in [0, 1] (0 = off), got 7.0" in body["error"]["message"], body
    status, body = post(server, completion(vllm_xargs={"temperance": '{"top_nsigma": 1}'}))
    assert status == 400 and "unknown field(s) 'top_nsigma'" in body["error"]["message"], body
    status, body = post(server, completion(temperature=0.5, vllm_xargs={"temperance": '{"min_p": 0.1}'}))
    assert status == 400 and "vLLM's own temperature=0.5" in json.dumps(body), body


def test_knobs_in_vllm_xargs_are_200_and_act(server):
    status, plain = post(server, completion(temperature=0))
    assert status == 200, plain
    status, body = post(server, completion(seed=3, vllm_xargs={"temperance": json.dumps(
        {"min_p": 0.1, "temperature": 3.0, "top_n_sigma": 1.0, "dry_multiplier": 0.5})}))
    assert status == 200 and body["choices"][0]["text"], body
    # a ban through the server changes the greedy text; the ids come from the tokenizer endpoint
    status, tok = _tokenize(server, plain["choices"][0]["text"])
    assert status == 200, tok
    first = tok["tokens"][0]
    status, banned = post(server, completion(temperature=0, vllm_xargs={"temperance": json.dumps(
        {"logit_bias": {str(first): False}})}))
    assert status == 200, banned
    assert banned["choices"][0]["text"] != plain["choices"][0]["text"]


def _tokenize(base: str, text: str) -> tuple[int, dict]:
    req = urllib.request.Request(base + "/tokenize", data=json.dumps(
        {"model": "smollm2", "prompt": text, "add_special_tokens": False}).encode(),
        headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")

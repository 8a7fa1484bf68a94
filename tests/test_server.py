"""Live-server tests for `temperance serve` with the official openai client (real SmolLM2).

One server subprocess per test session (127.0.0.1, a free port); every bad request must get a 4xx
JSON error naming the problem and leave /health ok.
"""

import asyncio
import json
import os
import socket
import subprocess
import sys
import time

import pytest

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

pytestmark = pytest.mark.slow

CAP, MAX_N, MAX_PROMPT = 64, 4, 256


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def server():
    port = _free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.Popen(
        [sys.executable, "-m", "temperance", "serve", "--port", str(port), "--threads", "1",
         "--max-tokens-cap", str(CAP), "--max-n", str(MAX_N), "--max-prompt-tokens", str(MAX_PROMPT),
         "--max-batch", "32", "--max-queue", "256"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited: {proc.stdout.read()}")
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail("server did not come up in 120 s")
    yield base
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="session")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="none", max_retries=0)


def _healthy(server):
    r = httpx.get(server + "/health", timeout=5)
    assert r.status_code == 200 and r.json()["worker_alive"]


# -- the happy paths ------------------------------------------------------------------------------


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == ["smollm2"]
    _healthy(server)


def test_samplers_endpoint_lists_the_registry(server):
    from temperance.params import FIELDS, SAMPLERS

    d = httpx.get(server + "/v1/samplers", timeout=10).json()
    assert d["order"] == list(SAMPLERS)
    fields = {k["field"] for s in d["stages"] for k in s["knobs"]} | {k["field"] for k in d["mirostat"]["knobs"]}
    assert fields == set(FIELDS)


def test_completion_with_knobs_logprobs_usage(client):
    r = client.completions.create(
        model="smollm2", prompt="The capital of France is", max_tokens=6, seed=3, temperature=0.8,
        logprobs=3, extra_body={"min_p": 0.05, "top_k": 40, "repeat_penalty": 1.1, "samplers": "llama.cpp"})
    c = r.choices[0]
    assert c.text and c.finish_reason in ("length", "stop")
    assert r.usage.completion_tokens == len(c.logprobs.tokens) <= 6 and r.usage.prompt_tokens == 5
    assert all(lp <= 0 for lp in c.logprobs.token_logprobs)
    assert all(1 <= len(t) <= 3 for t in c.logprobs.top_logprobs)
    # a seeded request is reproducible
    r2 = client.completions.create(
        model="smollm2", prompt="The capital of France is", max_tokens=6, seed=3, temperature=0.8,
        logprobs=3, extra_body={"min_p": 0.05, "top_k": 40, "repeat_penalty": 1.1, "samplers": "llama.cpp"})
    assert r2.choices[0].text == c.text


def test_greedy_stop_and_n(client):
    r = client.completions.create(model="smollm2", prompt="The capital of France is", max_tokens=8,
                                  temperature=0, stop=["."])
    assert r.choices[0].text == " Paris" and r.choices[0].finish_reason == "stop"
    r = client.completions.create(model="smollm2", prompt="Once upon a time", max_tokens=8, n=3, seed=11,
                                  extra_body={"min_p": 0.02, "preset": "vllm"})
    assert sorted(c.index for c in r.choices) == [0, 1, 2]
    assert len({c.text for c in r.choices}) > 1  # samples get seed, seed+1, seed+2


def test_chat_and_chat_logprobs(client):
    r = client.chat.completions.create(
        model="smollm2", messages=[{"role": "system", "content": "Be brief."},
                                   {"role": "user", "content": "What is 2+2?"}],
        max_tokens=8, seed=1, temperature=0, logprobs=True, top_logprobs=2)
    c = r.choices[0]
    assert c.message.role == "assistant" and c.message.content
    assert len(c.logprobs.content) == r.usage.completion_tokens
    # temperature 0 is a point mass: the chosen token (logprob 0) is the only one sampled from
    assert all(len(t.top_logprobs) == 1 and t.logprob == 0.0 for t in c.logprobs.content)
    r = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "What is 2+2?"}],
        max_tokens=4, seed=1, temperature=0.7, logprobs=True, top_logprobs=2)
    assert all(len(t.top_logprobs) == 2 for t in r.choices[0].logprobs.content)


def test_streaming_matches_non_streaming(client):
    kw = dict(model="smollm2", max_tokens=8, seed=5, temperature=0.9,
              extra_body={"top_p": 0.9, "xtc_probability": 0.5, "xtc_threshold": 0.1})
    full = client.completions.create(prompt="Tell me a story:", **kw).choices[0].text
    parts, finish = [], None
    for ch in client.completions.create(prompt="Tell me a story:", stream=True, **kw):
        parts.append(ch.choices[0].text)
        finish = ch.choices[0].finish_reason or finish
    assert "".join(parts) == full and finish == "length"
    chat = client.chat.completions.create(messages=[{"role": "user", "content": "Hi"}], stream=True,
                                          stream_options={"include_usage": True}, **kw)
    chunks = list(chat)
    assert chunks[-1].usage.completion_tokens == 8
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_sse_ends_with_done(server):
    with httpx.stream("POST", server + "/v1/completions", timeout=30,
                      json={"prompt": "Hello", "max_tokens": 3, "stream": True, "seed": 1}) as r:
        lines = [ln for ln in r.iter_lines() if ln]
    assert lines[-1] == "data: [DONE]" and all(ln.startswith("data: ") for ln in lines)


# -- bad input --------------------------------------------------------------------------------------

BAD = [
    ("malformed json", b'{"prompt": "hi",', 400, "not valid JSON"),
    ("not an object", b"[1, 2]", 400, "JSON object"),
    ("wrong type", {"prompt": "hi", "top_k": "5"}, 400, "top_k"),
    ("wrong type temp", {"prompt": "hi", "temperature": [1]}, 400, "temperature"),
    ("out of range", {"prompt": "hi", "top_p": 1.5}, 400, "top_p"),
    ("out of range llama name", {"prompt": "hi", "repeat_penalty": -1}, 400, "repeat_penalty"),
    ("unknown sampler", {"prompt": "hi", "samplers": ["top_k", "bogus"]}, 400, "unknown sampler 'bogus'"),
    ("duplicate sampler", {"prompt": "hi", "samplers": ["top_k", "top_k"]}, 400, "appears twice"),
    ("knob without its stage", {"prompt": "hi", "min_p": 0.1, "samplers": ["top_k"]}, 400, "min_p"),
    ("unknown preset", {"prompt": "hi", "preset": "nope"}, 400, "preset"),
    ("unknown field", {"prompt": "hi", "top-k": 3}, 400, "'top-k'"),
    ("empty prompt", {"prompt": ""}, 400, "prompt is empty"),
    ("missing prompt", {"max_tokens": 3}, 400, "prompt is required"),
    ("huge prompt", {"prompt": "word " * 2000}, 400, "prompt is"),
    ("max_tokens over cap", {"prompt": "hi", "max_tokens": CAP + 1}, 400, "max_tokens"),
    ("max_tokens zero", {"prompt": "hi", "max_tokens": 0}, 400, "max_tokens"),
    ("n over cap", {"prompt": "hi", "n": MAX_N + 1}, 400, "n="),
    ("bad stop", {"prompt": "hi", "stop": [1]}, 400, "stop"),
    ("bad seed", {"prompt": "hi", "seed": "x"}, 400, "seed"),
    ("bad logit_bias", {"prompt": "hi", "logit_bias": {"abc": 1}}, 400, "logit_bias"),
    ("unknown model", {"prompt": "hi", "model": "gpt-9"}, 404, "unknown model"),
    ("bad grammar", {"prompt": "hi", "grammar": "root ::= ("}, 400, "gbnf"),
    ("bad json_schema", {"prompt": "hi", "json_schema": {"type": "nonsense"}}, 400, "json_schema"),
    ("bad response_format", {"prompt": "hi", "response_format": {"type": "yaml"}}, 400, "response_format"),
    ("two constraints", {"prompt": "hi", "grammar": "root ::= \"a\"", "json_schema": {}}, 400, "not both"),
    ("bias bans all", {"prompt": "hi", "stream": True, "logit_bias": {str(i): False for i in range(49152)}},
     400, "bans every token"),
    ("huge smoothing", {"prompt": "hi", "smoothing_factor": 1e308}, 400, "smoothing_factor"),
    ("huge bias", {"prompt": "hi", "logit_bias": {"5": 1e308}}, 400, "logit_bias"),
    ("lone surrogate", b'{"prompt": "\\ud800 hi"}', 400, "not valid Unicode"),
    ("deep nesting", b'{"prompt": ' + b"[" * 60000 + b"]" * 60000 + b"}", 400, "nested too deeply"),
    ("several MB", {"prompt": "x" * (3 << 20)}, 413, "limit"),
]


@pytest.mark.parametrize("name, body, status, message", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_clear_4xx(server, name, body, status, message):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(server + "/v1/completions", content=data, timeout=30,
                   headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert message in err["message"] and err["type"]
    _healthy(server)


def test_bad_chat_messages(server):
    for body, msg in [({"messages": []}, "messages"), ({"messages": [{"role": "user"}]}, "content"),
                      ({"messages": "hi"}, "messages")]:
        r = httpx.post(server + "/v1/chat/completions", json=body, timeout=30)
        assert r.status_code == 400 and msg in r.json()["error"]["message"]
    r = httpx.get(server + "/no/such/route")
    assert r.status_code == 404 and "error" in r.json()
    _healthy(server)


def test_openai_client_sees_errors(client):
    with pytest.raises(openai.BadRequestError, match="min_p"):
        client.completions.create(model="smollm2", prompt="hi", extra_body={"min_p": 2})
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="hi")


def test_inspect_endpoint(server):
    r = httpx.post(server + "/v1/inspect", timeout=30, json={
        "prompt": "The capital of France is", "top": 5, "min_p": 0.05, "temperature": 1.5, "seed": 1})
    d = r.json()
    assert d["chain"] == ["min_p", "temperature"] and [s["name"] for s in d["stages"]] == ["input", "min_p", "temperature"]
    assert d["tokens"][0]["text"] == " Paris" and d["stages"][1]["kept"] < d["stages"][0]["kept"]
    assert d["stages"][1]["entropy"] < d["stages"][0]["entropy"]


# -- batching, seeds, load --------------------------------------------------------------------------

PROMPTS = ["Once upon a time", "The capital of France is", "def add(a, b):", "My favourite colour is",
           "In 1492,", "The best way to learn is"]


def _req(i):
    return dict(prompt=PROMPTS[i % len(PROMPTS)], seed=1000 + i, max_tokens=4 + i % 5,
                temperature=1.0 + (i % 3) * 0.2, extra_body={"min_p": 0.02 * (i % 4)})


def test_load_32_concurrent_streams_match_sequential(server, client):
    total = 128
    # keys that share max_tokens batch together; check a sample against sequential, unbatched runs
    check = list(range(0, total, 13))
    sequential = {i: client.completions.create(model="smollm2", **_req(i)).choices[0].text for i in check}
    batches_before = httpx.get(server + "/health").json()["batches"]

    async def main():
        ac = openai.AsyncOpenAI(base_url=server + "/v1", api_key="none", max_retries=0, timeout=120)
        sem = asyncio.Semaphore(32)
        out = {}

        async def one(i):
            async with sem:
                text = ""
                async for ch in await ac.completions.create(model="smollm2", stream=True, **_req(i)):
                    text += ch.choices[0].text
                out[i] = text

        await asyncio.gather(*(one(i) for i in range(total)))
        await ac.close()
        return out

    t0 = time.time()
    out = asyncio.run(main())
    elapsed = time.time() - t0
    assert len(out) == total
    for i in check:
        assert out[i] == sequential[i], (i, out[i], sequential[i])
    batches = httpx.get(server + "/health").json()["batches"] - batches_before
    # mixed max_tokens, temperatures and min_p share one decode loop: far fewer calls than requests
    assert batches <= total // 4, f"requests were not batched ({batches} generate calls)"
    print(f"\n{total} streaming requests, concurrency 32: {elapsed:.1f} s, {batches} generate calls")
    _healthy(server)


def test_mixed_limits_share_one_batch_and_keep_their_own_limits(server, client):
    reqs = [dict(prompt="Once upon a time", seed=7 + i, max_tokens=m, temperature=1.0,
                 stop=stop, extra_body={"min_tokens": mn})
            for i, (m, mn, stop) in enumerate([(3, 0, None), (9, 9, None), (6, 0, ["\n"]), (12, 0, None)])]
    alone = [client.completions.create(model="smollm2", **r).choices[0].text for r in reqs]

    async def main():
        ac = openai.AsyncOpenAI(base_url=server + "/v1", api_key="none", max_retries=0, timeout=120)
        res = await asyncio.gather(*(ac.completions.create(model="smollm2", **r) for r in reqs))
        await ac.close()
        return res

    before = httpx.get(server + "/health").json()["batches"]
    res = asyncio.run(main())
    calls = httpx.get(server + "/health").json()["batches"] - before
    assert calls <= 2, calls  # one batch (two if the first request was taken alone)
    for r, out, a in zip(reqs, res, alone):
        used = out.usage.completion_tokens
        assert used <= r["max_tokens"], (r, used)
        assert used >= r["extra_body"]["min_tokens"], (r, used)
        assert out.choices[0].text == a  # seeded: the same text alone and batched
    _healthy(server)


def test_disconnect_mid_stream_stops_generation(server):
    before = httpx.get(server + "/health").json()["stopped_early"]
    t0 = time.time()
    with httpx.stream("POST", server + "/v1/completions", timeout=30,
                      json={"prompt": "Count: 1, 2, 3,", "max_tokens": CAP, "stream": True, "seed": 1,
                            "logit_bias": {"0": False, "2": False}}) as r:  # no EOS: it would run CAP tokens
        for _ in r.iter_lines():
            break  # drop the connection after the first chunk
    while httpx.get(server + "/health").json()["stopped_early"] == before:
        assert time.time() - t0 < 30, "the worker did not stop the cancelled batch"
        time.sleep(0.1)
    _healthy(server)
    r = httpx.post(server + "/v1/completions", json={"prompt": "Hi", "max_tokens": 2}, timeout=60)
    assert r.status_code == 200


def test_queue_overflow_is_429(monkeypatch):
    """In-process app with an idle worker and a 1-slot queue: the second waiting request gets 429."""
    from fastapi.testclient import TestClient

    from temperance import server as srv

    class Tok:
        def encode(self, s):
            return [1, 2, 3]

        def token_texts(self):
            return ["a"] * 10

    class Runtime:
        tokenizer, vocab_size, max_context, eos_token_ids = Tok(), 10, 100, frozenset()

    monkeypatch.setattr(srv.Worker, "_run", lambda self: None)  # nobody takes jobs off the queue
    app = srv.create_app(Runtime(), srv.ServerConfig(max_queue=1))
    app.state.worker.queue.put_nowait(object())  # the one slot is taken
    r = TestClient(app).post("/v1/completions", json={"prompt": "hi", "max_tokens": 2})
    assert r.status_code == 429 and "busy" in r.json()["error"]["message"]
    assert r.json()["error"]["type"] == "rate_limit_error"


# -- continuous batching and structured output ---------------------------------------------------


def test_response_format_json_schema_validates(client):
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                               "capital": {"type": "boolean"}},
              "required": ["city", "capital"], "additionalProperties": False}
    r = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Name a city as JSON."}], max_tokens=48,
        seed=2, temperature=0.7, response_format={"type": "json_schema",
                                                  "json_schema": {"name": "city", "schema": schema}})
    c = r.choices[0]
    assert c.finish_reason == "stop", c
    doc = json.loads(c.message.content)
    try:
        import jsonschema
        jsonschema.validate(doc, schema)
    except ImportError:
        assert set(doc) == {"city", "capital"} and isinstance(doc["capital"], bool)
    r = client.completions.create(model="smollm2", prompt="Answer:", max_tokens=12, seed=1,
                                  extra_body={"grammar": 'root ::= ("yes" | "no")'})
    assert r.choices[0].text in ("yes", "no")


def test_short_request_is_served_while_a_long_one_runs(server):
    """Head of line: an 8-token request sent during a long one finishes before it (joins the batch)."""
    long_body = {"prompt": "Count: 1, 2, 3,", "max_tokens": CAP, "seed": 1, "logit_bias": {"0": False, "2": False}}
    done: dict[str, float] = {}

    async def main():
        async with httpx.AsyncClient(timeout=120) as ac:
            async def timed(name, body, delay=0.0):
                await asyncio.sleep(delay)
                r = await ac.post(server + "/v1/completions", json=body)
                assert r.status_code == 200, r.text
                done[name] = time.time()
                return r.json()
            long_r, short_r = await asyncio.gather(
                timed("long", long_body), timed("short", {"prompt": "Hi", "max_tokens": 8, "seed": 2}, 0.5))
            return long_r, short_r

    long_r, short_r = asyncio.run(main())
    assert long_r["usage"]["completion_tokens"] == CAP
    assert done["short"] < done["long"], done
    _healthy(server)


def test_non_streaming_disconnect_frees_the_rows(server):
    before = httpx.get(server + "/health").json()["stopped_early"]
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server + "/v1/completions", timeout=1.0,
                   json={"prompt": "Count: 1, 2, 3,", "max_tokens": CAP, "seed": 1,
                         "logit_bias": {"0": False, "2": False}})
    t0 = time.time()
    while httpx.get(server + "/health").json()["stopped_early"] == before:
        assert time.time() - t0 < 30, "the abandoned request kept its rows"
        time.sleep(0.1)
    _healthy(server)

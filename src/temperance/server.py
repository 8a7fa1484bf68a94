"""`temperance serve`: an OpenAI-compatible HTTP server (FastAPI + uvicorn) and the playground.

    POST /v1/completions        POST /v1/chat/completions   (SSE when "stream": true)
    GET  /v1/models             GET  /health                GET  /  (playground.html)
    POST /v1/inspect            next-token distribution after each active sampler stage

Sampling knobs beyond OpenAI's are extra body fields under llama.cpp server names (``top_k``,
``min_p``, ``repeat_penalty``, ``dry_multiplier``, ``samplers``, ``preset`` ...), turned into
`SamplingParams` by `request.params_from_request` (shared with the CLI).

Scheduling (static micro-batching). One worker thread owns the model. Requests are validated and
tokenized on arrival, then put on a bounded queue (full → 429). The worker takes the oldest job plus
everything else queued, up to ``max_batch`` rows (a request with ``n`` samples is ``n`` rows), and
runs them all in ONE `generate` call, each row with its own request's knobs, seed, ``max_tokens``,
``min_tokens`` and stop strings. Requests that arrive while a batch runs wait for the next batch
(no continuous batching). Each sample is its own row with seed
``seed + sample`` (as `generate` does for ``n``), so a seeded request gives the same text alone
or batched.

Disconnects: when a streaming client goes away its job is marked cancelled; the worker checks the
flags after every event and stops the whole `generate` call once every job in it is cancelled
(rows of a partly cancelled batch keep running to the batch's end, their events are dropped).
Non-streaming requests run to completion.

Errors are JSON ``{"error": {"message", "type", "code"}}``: 400 bad input, 404 unknown model or
route, 413 body over ``max_body_bytes``, 429 queue full, 500 an internal error (the server stays
up).
"""



import asyncio
import json
import queue
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import TemperanceError
from .params import describe
from .request import GenOptions, params_from_request

__all__ = ["ServerConfig", "create_app", "serve"]


@dataclass(frozen=True)
class ServerConfig:
    model_name: str = "smollm2"
    model_aliases: tuple[str, ...] = ()
    max_tokens_cap: int = 512        # most max_tokens a request may ask
    default_max_tokens: int = 16     # OpenAI's completions default
    max_prompt_tokens: int = 2048    # longest prompt (tokens, after the chat template)
    max_n: int = 8                   # most samples per request
    max_batch: int = 32              # most rows in one generate call
    max_queue: int = 64              # most waiting requests before 429
    max_body_bytes: int = 1 << 20    # 1 MiB → 413 above
    max_inspect_top: int = 50


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code = status, message, type_, code


def _err(status: int, message: str, type_: str = "invalid_request_error", code: str | None = None):
    from fastapi.responses import JSONResponse
    return JSONResponse({"error": {"message": message, "type": type_, "code": code}}, status_code=status)


# -- jobs and the worker -----------------------------------------------------------------------------


@dataclass(eq=False)
class Job:
    ids: list[int]
    params: Any                       # SamplingParams with a concrete seed
    opts: GenOptions
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue
    cancelled: bool = False
    created: float = field(default_factory=time.time)

    def put(self, item: Any) -> None:
        self.loop.call_soon_threadsafe(self.out.put_nowait, item)


class Worker:
    """The one thread that runs the model; see the module docstring for the batching policy."""

    def __init__(self, runtime: Any, config: ServerConfig):
        self.runtime, self.config = runtime, config
        self.queue: queue.Queue[Job] = queue.Queue(maxsize=config.max_queue)
        self.lock = threading.Lock()          # the model: worker batches and /v1/inspect
        self.batches = 0                      # generate calls so far (for tests / stats)
        self.stopped_early = 0                # generate calls stopped because every job was cancelled
        self.thread = threading.Thread(target=self._run, name="temperance-worker", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> None:
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            raise APIError(429, f"server busy: {self.config.max_queue} requests already queued; "
                                "retry later", "rate_limit_error", "queue_full") from None

    def _take(self) -> list[Job]:
        jobs = [self.queue.get()]
        rows = jobs[0].opts.n
        while rows < self.config.max_batch:
            try:
                job = self.queue.get_nowait()
            except queue.Empty:
                break
            jobs.append(job)
            rows += job.opts.n
        return jobs

    def _run(self) -> None:
        while True:
            group = [j for j in self._take() if not j.cancelled]
            if not group:
                continue
            try:
                with self.lock:
                    self._generate(group)
            except Exception as e:  # noqa: BLE001 - reported to the clients, worker lives on
                msg = str(e) if isinstance(e, TemperanceError) else f"internal error: {type(e).__name__}: {e}"
                for j in group:
                    j.put(APIError(400 if isinstance(e, TemperanceError) else 500, msg,
                                   "invalid_request_error" if isinstance(e, TemperanceError) else "server_error"))

    def _generate(self, jobs: list[Job]) -> None:
        from .generate import generate

        rows = [(j, s) for j in jobs for s in range(j.opts.n)]
        prompts = [j.ids for j, _ in rows]
        params = [replace(j.params, seed=(j.params.seed + s) % 2**63) for j, s in rows]
        top = max((j.opts.top_logprobs for j in jobs), default=0)
        self.batches += 1
        # every row keeps its own request's limits and stop strings: one decode loop for all
        gen = generate(self.runtime, prompts, params, max_tokens=[j.opts.max_tokens for j, _ in rows],
                       min_tokens=[j.opts.min_tokens for j, _ in rows],
                       stop=[list(j.opts.stop or ()) for j, _ in rows], top_n=top)
        try:
            for e in gen:
                job, sample = rows[e.request]
                if not job.cancelled:
                    job.put((sample, e))
                if all(j.cancelled for j in jobs):
                    self.stopped_early += 1
                    break
        finally:
            gen.close()
        for j in jobs:
            j.put(None)  # end of the job's stream


# -- the app -------------------------------------------------------------------------------------------


def create_app(runtime: Any, config: ServerConfig = ServerConfig()):
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    app = FastAPI(title="temperance", docs_url=None, redoc_url=None, openapi_url=None)
    worker = Worker(runtime, config)
    app.state.worker = worker
    tok = runtime.tokenizer
    texts = tok.token_texts()                   # labels: special tokens keep their names
    out_texts = _output_texts(tok, runtime)      # generated text: special tokens are ""
    names = {config.model_name, *config.model_aliases}

    @app.exception_handler(APIError)
    async def _api_error(_req, e: APIError):
        return _err(e.status, e.message, e.type, e.code)

    @app.exception_handler(TemperanceError)
    async def _bad_input(_req, e: TemperanceError):
        return _err(400, str(e))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req, e):
        return _err(e.status_code, str(e.detail), "invalid_request_error" if e.status_code < 500 else "server_error")

    @app.exception_handler(RequestValidationError)
    async def _validation(_req, e):
        return _err(400, str(e))

    @app.exception_handler(Exception)
    async def _internal(_req, e):
        return _err(500, f"internal error: {type(e).__name__}: {e}", "server_error")

    async def read_body(request: Request) -> dict:
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > config.max_body_bytes:
            raise APIError(413, f"request body is {int(size)} bytes; the limit is {config.max_body_bytes}",
                           code="body_too_large")
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > config.max_body_bytes:
                raise APIError(413, f"request body is over the limit of {config.max_body_bytes} bytes",
                               code="body_too_large")
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise APIError(400, f"request body is not valid JSON: {e}", code="invalid_json") from None
        if not isinstance(body, dict):
            raise APIError(400, f"request body must be a JSON object, got {type(body).__name__}")
        return body

    def check_model(body: dict) -> None:
        m = body.get("model")
        if m is not None and m not in names:
            raise APIError(404, f"unknown model {m!r}; this server serves {config.model_name!r}",
                           code="model_not_found")

    def parse(body: dict) -> tuple[Any, GenOptions]:
        params, opts = params_from_request(
            body, defaults=GenOptions(max_tokens=config.default_max_tokens))
        if opts.max_tokens > config.max_tokens_cap:
            raise APIError(400, f"max_tokens={opts.max_tokens} is over this server's cap of "
                                f"{config.max_tokens_cap} (--max-tokens-cap)")
        if opts.n > config.max_n:
            raise APIError(400, f"n={opts.n} is over this server's cap of {config.max_n} (--max-n)")
        if params.seed is None:
            params = replace(params, seed=secrets.randbits(62))
        return params, opts

    def check_prompt_ids(ids: list[int]) -> list[int]:
        if not ids:
            raise APIError(400, "prompt has no tokens")
        limit = config.max_prompt_tokens
        if runtime.max_context is not None:
            limit = min(limit, runtime.max_context - 1)
        if len(ids) > limit:
            raise APIError(400, f"prompt is {len(ids)} tokens; the limit is {limit} (--max-prompt-tokens)",
                           code="prompt_too_long")
        return ids

    def encode_prompt(body: dict) -> list[int]:
        p = body.get("prompt")
        if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str):
            p = p[0]
        if isinstance(p, str):
            if not p:
                raise APIError(400, "prompt is empty")
            if len(p) > config.max_prompt_tokens * 32:
                raise APIError(400, f"prompt is {len(p)} characters; far over the limit of "
                                    f"{config.max_prompt_tokens} tokens", code="prompt_too_long")
            return check_prompt_ids(list(tok.encode(p)))
        if isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
            if any(not 0 <= t < runtime.vocab_size for t in p):
                raise APIError(400, f"prompt token ids must be in [0, {runtime.vocab_size})")
            return check_prompt_ids(list(p))
        if p is None:
            raise APIError(400, "prompt is required")
        raise APIError(400, "prompt must be a non-empty string or a list of token ids "
                            "(batched prompts: send one request per prompt)")

    def encode_messages(body: dict) -> list[int]:
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise APIError(400, "messages must be a non-empty list of {role, content} objects")
        clean = []
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise APIError(400, f"messages[{i}] must be an object with a string role")
            c = m.get("content")
            if isinstance(c, list):  # [{"type": "text", "text": ...}]
                if not all(isinstance(x, dict) and x.get("type") == "text" and isinstance(x.get("text"), str) for x in c):
                    raise APIError(400, f"messages[{i}].content: only text parts are supported")
                c = "".join(x["text"] for x in c)
            if not isinstance(c, str):
                raise APIError(400, f"messages[{i}].content must be a string")
            if len(c) > config.max_prompt_tokens * 32:
                raise APIError(400, f"messages[{i}].content is {len(c)} characters; far over the limit "
                                    f"of {config.max_prompt_tokens} tokens", code="prompt_too_long")
            clean.append({"role": m["role"], "content": c})
        try:
            ids = list(tok.apply_chat_template(clean))
        except (ValueError, TypeError) as e:
            raise APIError(400, f"messages: the chat template failed: {e}") from None
        return check_prompt_ids(ids)

    def logprob_entry(e, opts: GenOptions, chat: bool):
        t = out_texts[e.token] if e.token < len(out_texts) else ""
        tops = [(i, v) for i, v in (e.top or [])[:opts.top_logprobs] if v > float("-inf")]
        if chat:
            return {"token": t, "logprob": e.logprob, "bytes": list(t.encode("utf-8")),
                    "top_logprobs": [{"token": texts[i] if i < len(texts) else "", "logprob": v,
                                      "bytes": list((texts[i] if i < len(texts) else "").encode("utf-8"))}
                                     for i, v in tops]}
        top: dict[str, float] = {}
        for i, v in tops:
            top.setdefault(texts[i] if i < len(texts) else "", v)
        return t, e.logprob, top

    async def run(request: Request, chat: bool):
        body = await read_body(request)
        check_model(body)
        params, opts = parse(body)
        ids = encode_messages(body) if chat else encode_prompt(body)
        loop = asyncio.get_running_loop()
        job = Job(ids, params, opts, loop, asyncio.Queue())
        worker.submit(job)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        obj = "chat.completion" if chat else "text_completion"
        if opts.stream:
            return StreamingResponse(stream(job, rid, created, chat, len(ids)), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        choices = [{"text": "", "tokens": 0, "lp": [], "finish": None} for _ in range(opts.n)]
        try:
            while True:
                item = await job.out.get()
                if item is None:
                    break
                if isinstance(item, APIError):
                    raise item
                s, e = item
                c = choices[s]
                c["text"] += e.text
                c["tokens"] += 1
                c["finish"] = e.finish_reason or c["finish"]
                if opts.logprobs:
                    c["lp"].append(logprob_entry(e, opts, chat))
        finally:
            job.cancelled = True
        out = []
        for i, c in enumerate(choices):
            if chat:
                ch = {"index": i, "message": {"role": "assistant", "content": c["text"]},
                      "logprobs": {"content": c["lp"]} if opts.logprobs else None, "finish_reason": c["finish"]}
            else:
                lp = None
                if opts.logprobs:
                    offs, pos = [], 0
                    for t, _, _ in c["lp"]:
                        offs.append(pos)
                        pos += len(t)
                    lp = {"tokens": [t for t, _, _ in c["lp"]], "token_logprobs": [v for _, v, _ in c["lp"]],
                          "top_logprobs": [d for _, _, d in c["lp"]], "text_offset": offs}
                ch = {"index": i, "text": c["text"], "logprobs": lp, "finish_reason": c["finish"]}
            out.append(ch)
        done = sum(c["tokens"] for c in choices)
        return JSONResponse({"id": rid, "object": obj, "created": created, "model": config.model_name,
                             "choices": out, "usage": {"prompt_tokens": len(ids), "completion_tokens": done,
                                                       "total_tokens": len(ids) + done}})

    async def stream(job: Job, rid: str, created: int, chat: bool, n_prompt: int):
        obj = "chat.completion.chunk" if chat else "text_completion"
        opts = job.opts

        def chunk(choices, usage=None):
            d = {"id": rid, "object": obj, "created": created, "model": config.model_name, "choices": choices}
            if usage is not None:
                d["usage"] = usage
            return f"data: {json.dumps(d, ensure_ascii=False)}\n\n"

        done = 0
        try:
            if chat:
                yield chunk([{"index": s, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                              "finish_reason": None} for s in range(opts.n)])
            while True:
                item = await job.out.get()
                if item is None:
                    break
                if isinstance(item, APIError):
                    yield f"data: {json.dumps({'error': {'message': item.message, 'type': item.type}})}\n\n"
                    break
                s, e = item
                done += 1
                lp = logprob_entry(e, opts, chat) if opts.logprobs else None
                if chat:
                    ch = {"index": s, "delta": {"content": e.text} if e.text else {},
                          "logprobs": {"content": [lp]} if lp else None, "finish_reason": e.finish_reason}
                else:
                    ch = {"index": s, "text": e.text, "finish_reason": e.finish_reason,
                          "logprobs": None if lp is None else {
                              "tokens": [lp[0]], "token_logprobs": [lp[1]], "top_logprobs": [lp[2]],
                              "text_offset": [0]}}
                yield chunk([ch])
            if opts.include_usage:
                yield chunk([], {"prompt_tokens": n_prompt, "completion_tokens": done,
                                 "total_tokens": n_prompt + done})
            yield "data: [DONE]\n\n"
        finally:
            job.cancelled = True  # a disconnect lands here too (the generator is closed)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await run(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await run(request, chat=True)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": config.model_name, "object": "model", "created": 0,
                                            "owned_by": "temperance"}]}

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": config.model_name, "queued": worker.queue.qsize(),
                "worker_alive": worker.thread.is_alive(), "batches": worker.batches,
                "stopped_early": worker.stopped_early}

    @app.get("/v1/samplers")
    async def samplers():
        return describe()

    @app.get("/")
    async def playground():
        return FileResponse(Path(__file__).with_name("playground.html"), media_type="text/html")

    @app.post("/v1/inspect")
    async def inspect_endpoint(request: Request):
        body = await read_body(request)
        check_model(body)
        top = body.pop("top", 10)
        append = body.pop("append", None) or []
        chat = body.pop("chat", False)
        if isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= config.max_inspect_top:
            raise APIError(400, f"top must be an integer in [1, {config.max_inspect_top}], got {top!r}")
        if not isinstance(append, list) or not all(isinstance(t, int) and 0 <= t < runtime.vocab_size for t in append):
            raise APIError(400, "append must be a list of token ids")
        gen = {k: body.pop(k) for k in list(body) if k in ("max_tokens", "n", "stream", "logprobs", "top_logprobs")}
        del gen
        params, _ = parse(body)
        if chat:
            body["messages"] = [{"role": "user", "content": body.get("prompt")}]
            ids = encode_messages(body)
        else:
            ids = encode_prompt(body)
        ids = check_prompt_ids(ids + append)
        with worker.lock:
            return await asyncio.to_thread(_inspect, runtime, texts, ids, params, top, out_texts)

    return app


def _output_texts(tok: Any, runtime: Any) -> list[str]:
    """Per-token text as it appears in output: special tokens (EOS, `<|im_end|>`, ...) are ""."""
    if hasattr(tok, "output_texts"):
        return tok.output_texts()
    eos = set(getattr(runtime, "eos_token_ids", ()) or ())
    return [("" if i in eos else t) for i, t in enumerate(tok.token_texts())]


def _inspect(runtime: Any, texts: list[str], ids: list[int], params: Any, top: int,
             out_texts: list[str] | None = None) -> dict:
    """The next-token distribution after each active stage, and the token generation picks.

    Candidates are labelled by `texts` (names), the chosen token's `text` comes from `out_texts`
    (what it adds to the output: "" for a special token). The chosen token is `Chain.sample` on
    the same batch `generate` would build (seed, step 0, history = the prompt), so it is what
    generation picks first for that seed. The logits come from `runtime.peek` (no cache), so a
    running batch is not disturbed."""
    import math

    import torch

    from .batch import Batch
    from .chain import Chain
    from .generate import dry_breakers_for

    logits = runtime.peek([ids]).float()
    batch = Batch(params, history=[ids], dry_breakers=dry_breakers_for([params], runtime.tokenizer),
                  device=logits.device)
    chain = Chain(params)
    stages = [("input", logits)] + chain.stages(logits, batch)
    chosen = int(chain.sample(logits, batch).tokens[0])
    probs = [torch.softmax(x[0].float(), -1).cpu() for _, x in stages]
    order = torch.sort(probs[0], descending=True, stable=True).indices[:top].tolist()
    for i in torch.sort(probs[-1], descending=True, stable=True).indices[:top].tolist():
        if probs[-1][i] > 0 and i not in order:
            order.append(i)
    label = lambda i: texts[i] if i < len(texts) else f"<id {i}>"  # noqa: E731

    def entropy(p):
        nz = p[p > 0].double()
        return max(0.0, float(-(nz * nz.log()).sum() / math.log(2)))

    return {"tokens": [{"id": i, "text": label(i)} for i in order],
            "stages": [{"name": n, "probs": [float(p[i]) for i in order], "entropy": entropy(p),
                        "kept": int((p > 0).sum()), "other": float(1 - sum(float(p[i]) for i in order))}
                       for (n, _), p in zip(stages, probs)],
            "chain": [n for n, _ in stages[1:]],
            "chosen": {"id": chosen, "label": label(chosen), "eos": chosen in runtime.eos_token_ids,
                       "text": (out_texts or texts)[chosen] if chosen < len(out_texts or texts) else ""},
            "prompt_tokens": len(ids)}


def serve(model: str = "smollm2", host: str = "127.0.0.1", port: int = 8000, threads: int | None = None,
          **limits: Any) -> None:
    """Load the model, build the app, run uvicorn (blocks)."""
    import uvicorn

    from . import models

    runtime = models.load(model, threads=threads)
    aliases: tuple[str, ...] = ()
    try:
        spec = models.resolve(model)
        aliases = (spec.name, *spec.aliases)
    except Exception:  # noqa: BLE001 - a path: only its own name
        pass
    config = ServerConfig(model_name=model, model_aliases=aliases, **limits)
    app = create_app(runtime, config)
    print(f"temperance: serving {model} on http://{host}:{port}/ (playground at /)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=2)

"""`temperance serve`: an OpenAI-compatible HTTP server (FastAPI + uvicorn) and the playground.

    POST /v1/completions        POST /v1/chat/completions   (SSE when "stream": true)
    GET  /v1/models             GET  /health                GET  /  (playground.html)
    POST /v1/inspect            next-token distribution after each active sampler stage

Sampling knobs beyond OpenAI's are extra body fields under llama.cpp server names (``top_k``,
``min_p``, ``repeat_penalty``, ``dry_multiplier``, ``samplers``, ``preset`` ...), turned into
`SamplingParams` by `request.params_from_request` (shared with the CLI).

Structured output: OpenAI's ``response_format`` (``json_object``, ``json_schema``) and llama.cpp's
``grammar`` (GBNF) / ``json_schema`` fields go through the CLI's constraint code (`constrain`); an
invalid schema or grammar is a 400 before any token.

Scheduling (continuous batching). One worker thread owns the model and runs `engine.Engine`:
requests are validated and tokenized on arrival, then put on a bounded queue (full → 429). Between
two engine steps the worker moves queued requests into the running batch while their rows fit in
``max_batch`` (a request with ``n`` samples is ``n`` rows, prefilled once and forked); the rest
wait in the queue. So a short request sent while a long one runs joins at the next step and is
served while the long one goes on. Each sample is its own row with seed ``seed + sample``, so a
seeded request gives the same text alone or batched. `/v1/inspect` waits in the same queue and
runs between steps (`runtime.peek`, no cache): its chosen token is `Chain.sample`, what
generation picks first for that seed.

Disconnects: when a client goes away (a stream closed, or a non-streaming request whose
connection dropped, polled every 0.25 s) its job is marked cancelled, and the worker aborts its
rows: they leave the batch at the next step. Errors a request can know before its first token
(a bad schema, a ``logit_bias`` that bans every token) are a 4xx, not a 200 with an error event:
the handler waits for the first event before it starts the response. Connections are bounded by
uvicorn (``limit_concurrency``, keep-alive timeout, header size).

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
    max_batch: int = 32              # most rows in the running batch
    max_queue: int = 64              # most waiting requests before 429
    max_connections: int = 256       # most open connections (uvicorn answers 503 above)
    max_body_bytes: int = 1 << 20    # 1 MiB → 413 above
    max_inspect_top: int = 50


class ClientGone(Exception):
    """The client disconnected while its request ran (its rows were freed)."""


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code = status, message, type_, code


def _err(status: int, message: str, type_: str = "invalid_request_error", code: str | None = None):
    from fastapi.responses import JSONResponse
    return JSONResponse({"error": {"message": message, "type": type_, "code": code}}, status_code=status)


def _unicode(name: str, text: str) -> None:
    """A 400 for text the tokenizer cannot take (a lone surrogate such as "\\ud800")."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise APIError(400, f"{name} is not valid Unicode: {e.reason} at character {e.start}") from None


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
    inspect: int = 0                  # > 0: a /v1/inspect job (its top count), not a generation
    finished: int = 0                 # samples finished so far
    checked: float = 0.0              # when the client's connection was last checked (monotonic)

    def put(self, item: Any) -> None:
        self.loop.call_soon_threadsafe(self.out.put_nowait, item)


class Worker:
    """The one thread that owns the model: a loop over `Engine.step` (see the module docstring)."""

    def __init__(self, runtime: Any, config: ServerConfig, texts: list[str] | None = None,
                 out_texts: list[str] | None = None):
        from .engine import Engine

        self.runtime, self.config, self.texts, self.out_texts = runtime, config, texts or [], out_texts
        self.queue: queue.Queue[Job] = queue.Queue(maxsize=config.max_queue)
        self.engine = Engine(runtime, max_rows=config.max_batch)
        self.active: dict[int, Job] = {}      # engine request id -> job
        self.batches = 0                      # busy periods: the engine started from idle
        self.steps = 0                        # engine steps
        self.stopped_early = 0                # requests aborted (client gone) before they finished
        self.most_rows = 0                    # largest batch seen
        self._held: Job | None = None         # taken from the queue, waiting for room
        self.thread = threading.Thread(target=self._run, name="temperance-worker", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> None:
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            raise APIError(429, f"server busy: {self.config.max_queue} requests already queued; "
                                "retry later", "rate_limit_error", "queue_full") from None

    def _run(self) -> None:
        while True:
            try:
                idle = not self.engine.has_work()
                self._admit(block=idle)
                if idle and self.engine.has_work():
                    self.batches += 1
                for rid, job in list(self.active.items()):
                    if job.cancelled:
                        self.engine.abort(rid)
                        del self.active[rid]
                        self.stopped_early += 1
                if not self.engine.has_work():
                    continue
                events = self.engine.step()
                self.steps += 1
                self.most_rows = max(self.most_rows, len(self.engine.rows))
            except Exception as e:  # noqa: BLE001 - reported to the clients, worker lives on
                self._fail(e)
                continue
            for e in events:
                job = self.active.get(e.request)
                if job is None:
                    continue
                job.put((e.sample, e))
                if e.finish_reason is not None:
                    job.finished += 1
                    if job.finished == job.opts.n:
                        job.put(None)  # end of the job's stream
                        del self.active[e.request]

    def _admit(self, block: bool) -> None:
        """Move queued jobs into the engine while their rows fit in max_batch (the rest wait in
        the queue, so its bound is what gives 429s); inspect jobs run here, between steps."""
        eng = self.engine
        used = len(eng.rows) + sum(r.n for r in eng.pending)
        while True:
            job = self._held
            if job is None:
                try:
                    job = self.queue.get(timeout=0.5) if block and not used else self.queue.get_nowait()
                except queue.Empty:
                    return
            self._held = None
            if job.cancelled:
                continue
            if job.inspect:
                self._inspect(job)
                continue
            if used and used + job.opts.n > self.config.max_batch:
                self._held = job
                return
            self._add(job)
            used += job.opts.n

    def _add(self, job: Job) -> None:
        from .engine import Request

        o = job.opts
        try:
            rid = self.engine.add(Request(job.ids, job.params, n=o.n, max_tokens=o.max_tokens,
                                          min_tokens=o.min_tokens, stop=tuple(o.stop or ()),
                                          constraint=o.constraint, top_n=o.top_logprobs))
        except TemperanceError as e:
            job.put(APIError(400, str(e)))
            return
        self.active[rid] = job

    def _inspect(self, job: Job) -> None:
        try:
            job.put(_inspect(self.runtime, self.texts, job.ids, job.params, job.inspect, self.out_texts))
        except TemperanceError as e:
            job.put(APIError(400, str(e)))
        except Exception as e:  # noqa: BLE001
            job.put(APIError(500, f"internal error: {type(e).__name__}: {e}", "server_error"))

    def _fail(self, e: Exception) -> None:
        """A step failed: every running job gets the error; the engine starts afresh."""
        from .engine import Engine

        bad = isinstance(e, TemperanceError)
        msg = str(e) if bad else f"internal error: {type(e).__name__}: {e}"
        for job in self.active.values():
            job.put(APIError(400 if bad else 500, msg, "invalid_request_error" if bad else "server_error"))
        self.active.clear()
        if hasattr(self.runtime, "reset"):
            self.runtime.reset()
        self.engine = Engine(self.runtime, max_rows=self.config.max_batch)


# -- the app -------------------------------------------------------------------------------------------


def create_app(runtime: Any, config: ServerConfig = ServerConfig()):
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    app = FastAPI(title="temperance", docs_url=None, redoc_url=None, openapi_url=None)
    tok = runtime.tokenizer
    texts = tok.token_texts()                   # labels: special tokens keep their names
    out_texts = _output_texts(tok, runtime)      # generated text: special tokens are ""
    worker = Worker(runtime, config, texts, out_texts)
    app.state.worker = worker
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

    @app.exception_handler(ClientGone)
    async def _gone(_req, e):
        return _err(499, "client closed the request", "client_closed")

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
        except RecursionError:
            raise APIError(400, "request body is nested too deeply", code="invalid_json") from None
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
        banned = {int(t) for t, v in params.logit_bias.items() if v == float("-inf") or v is False}
        if len(banned & set(range(runtime.vocab_size))) == runtime.vocab_size:
            raise APIError(400, "logit_bias bans every token of the vocabulary")
        if opts.constraint is not None:
            opts.constraint.compile(runtime)  # an invalid schema or grammar: 400 before any token
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
            _unicode("prompt", p)
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
            _unicode(f"messages[{i}].content", c)
            _unicode(f"messages[{i}].role", m["role"])
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
        try:
            first = await next_item(job, request)  # errors known before the first token: a 4xx
        except BaseException:
            job.cancelled = True
            raise
        if isinstance(first, APIError):
            raise first
        if opts.stream:
            return StreamingResponse(stream(job, rid, created, chat, len(ids), first),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        choices = [{"text": "", "tokens": 0, "lp": [], "finish": None} for _ in range(opts.n)]
        try:
            item = first
            while item is not None:
                if isinstance(item, APIError):
                    raise item
                s, e = item
                c = choices[s]
                c["text"] += e.text
                c["tokens"] += 1
                c["finish"] = e.finish_reason or c["finish"]
                if opts.logprobs:
                    c["lp"].append(logprob_entry(e, opts, chat))
                item = await next_item(job, request)  # a client gone: its rows leave (cancelled)
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

    async def next_item(job: Job, request: Request):
        """The job's next item; checks every 0.25 s, whether or not items keep coming, for a client
        that went away (then raises ClientGone)."""
        while True:
            if time.monotonic() - job.checked >= 0.25:
                job.checked = time.monotonic()
                if await request.is_disconnected():
                    job.cancelled = True
                    raise ClientGone()
            try:
                return await asyncio.wait_for(job.out.get(), 0.25)
            except asyncio.TimeoutError:
                pass

    async def stream(job: Job, rid: str, created: int, chat: bool, n_prompt: int, first: Any):
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
            item = first
            while item is not None:
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
                item = await job.out.get()
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
                "steps": worker.steps, "rows": len(worker.engine.rows), "most_rows": worker.most_rows,
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
        for k in ("max_tokens", "n", "stream", "logprobs", "top_logprobs"):
            body.pop(k, None)
        params, _ = parse(body)
        if chat:
            body["messages"] = [{"role": "user", "content": body.get("prompt")}]
            ids = encode_messages(body)
        else:
            ids = encode_prompt(body)
        ids = check_prompt_ids(ids + append)
        job = Job(ids, params, GenOptions(), asyncio.get_running_loop(), asyncio.Queue(), inspect=top)
        worker.submit(job)  # behind the same queue (and its 429) as generation; run between steps
        item = await next_item(job, request)
        if isinstance(item, APIError):
            raise item
        return item

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
    # uvicorn's own bounds: open connections (503 above), idle keep-alive time, header size.
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=2,
                limit_concurrency=config.max_connections, timeout_keep_alive=5,
                h11_max_incomplete_event_size=64 * 1024)

"""The HTTP side of `flashhead serve`: OpenAI's routes on FastAPI, answered by the decode worker.

    POST /v1/completions, /v1/chat/completions   streaming (server-sent events) or not
    GET  /v1/models, /health, /metrics            /metrics: Prometheus text; ?format=json: JSON

Each request becomes a worker Job; its events come back through an asyncio queue. A bad request
gets a 400 with OpenAI's error body, a full queue a 503, an unexpected failure a 500 with one line,
never a traceback. A client that disconnects (mid-stream or while waiting) cancels its job.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException

from .protocol import ChatRequest, CompletionRequest, error
from .worker import Job, Worker

log = logging.getLogger("flashhead.serve")


def _fail(status: int, message: str, kind: str | None = None) -> JSONResponse:
    kind = kind or {400: "invalid_request_error", 404: "not_found_error", 503: "server_overloaded"}.get(
        status, "server_error")
    return JSONResponse(error(message, kind), status_code=status)


def create_app(worker: Worker, model_name: str) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app):
        worker.start()
        yield
        worker.stop()

    app = FastAPI(title="flashhead serve", lifespan=lifespan)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        return _fail(400, f"{where + ': ' if where else ''}{first.get('msg', 'invalid request')}")

    @app.exception_handler(HTTPException)
    async def _http(request, exc):
        return _fail(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _crash(request, exc):
        log.exception("request failed")
        return _fail(500, f"internal error: {type(exc).__name__}")

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": int(worker.started),
                                            "owned_by": "flashhead"}]}

    @app.get("/metrics")
    async def metrics(format: str = "prometheus"):
        m = worker.metrics()
        if format == "json":
            return m
        lines = []
        for k, v in m.items():
            if isinstance(v, (int, float)):
                lines += [f"# TYPE flashhead_{k} gauge", f"flashhead_{k} {v}"]
        return PlainTextResponse("\n".join(lines) + "\n")

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        return await _run(request, body, chat=False)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request):
        return await _run(request, body, chat=True)

    async def _run(request: Request, body, chat: bool):
        if body.model not in (None, "", model_name):
            return _fail(404, f"the model `{body.model}` does not exist (this server has `{model_name}`)")
        if body.model_extra:
            log.warning("ignored fields: %s", ", ".join(sorted(body.model_extra)))
        loop, events = asyncio.get_running_loop(), asyncio.Queue()
        logprobs = bool(body.logprobs is not None and body.logprobs is not False)
        top = (body.top_logprobs or 0) if chat else (body.logprobs or 0)
        params = {"max_new_tokens": body.max_tokens, "temperature": body.temperature, "top_p": body.top_p,
                  "top_k": body.top_k, "seed": body.seed, "logprobs": logprobs, "top_logprobs": top,
                  "exact": body.exact}
        job = Job([body.conversation()] if chat else body.prompts(), chat, params, list(body.stop or []), body.n,
                  lambda e: loop.call_soon_threadsafe(events.put_nowait, e))
        if not worker.submit(job):
            return _fail(503, f"the server's queue is full ({worker.max_queue} requests waiting); retry later")
        first = await events.get()
        if "error" in first:
            return _fail(first["status"], first["error"])
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        shape = _Shape(rid, model_name, chat, logprobs, first["prompt_tokens"])
        if body.stream:
            return StreamingResponse(_stream(request, job, events, shape, body.include_usage),
                                     media_type="text/event-stream")
        return await _collect(request, job, events, shape)

    async def _next(request: Request, job: Job, events: asyncio.Queue) -> dict | None:
        """The job's next event; None when the client went away (the job is cancelled)."""
        while True:
            try:
                return await asyncio.wait_for(events.get(), timeout=1.0)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    worker.cancel(job)
                    return None

    async def _collect(request, job, events, shape):
        texts, finish = [""] * len(job.choices), [None] * len(job.choices)
        lps = [[] for _ in job.choices]
        while True:
            e = await _next(request, job, events)
            if e is None:
                return _fail(499, "client closed the request")
            if "error" in e:
                return _fail(e["status"], e["error"])
            if "done" in e:
                return shape.whole(texts, finish, lps, e["completion_tokens"])
            texts[e["index"]] += e["text"]
            finish[e["index"]] = e["finish"] or finish[e["index"]]
            lps[e["index"]].append(e)

    async def _stream(request, job, events, shape, usage: bool):
        try:
            if shape.chat:
                for i in range(len(job.choices)):
                    yield shape.sse(shape.chunk(i, "", None, None, role=True))
            while True:
                e = await _next(request, job, events)
                if e is None:
                    return
                if "error" in e:
                    yield shape.sse(error(e["error"], "server_error"))
                    break
                if "done" in e:
                    if usage:
                        yield shape.sse({**shape.chunk(0, "", None, None), "choices": [],
                                         "usage": shape.usage(e["completion_tokens"])})
                    break
                yield shape.sse(shape.chunk(e["index"], e["text"], e["finish"], e))
            yield "data: [DONE]\n\n"
        finally:
            worker.cancel(job)             # a no-op once the job is done; frees it if the client left

    return app


class _Shape:
    """OpenAI's response objects (completion or chat, whole or chunked) for one request."""

    def __init__(self, rid: str, model: str, chat: bool, logprobs: bool, prompt_tokens: int):
        self.rid, self.model, self.chat, self.logprobs = rid, model, chat, logprobs
        self.prompt_tokens, self.created = prompt_tokens, int(time.time())

    def usage(self, completion: int) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion}

    @staticmethod
    def sse(obj: dict) -> str:
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

    def _logprobs(self, events: list[dict]):
        if not self.logprobs:
            return None
        toks = [(p, lp, top) for e in events for p, lp, top in zip(e["pieces"], e["logprobs"], e["top"])]
        if self.chat:
            return {"content": [{"token": p, "logprob": lp, "bytes": list(p.encode()),
                                 "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode())}
                                                  for t, v in top]}
                                for p, lp, top in toks]}
        offsets, at = [], 0
        for p, _, _ in toks:
            offsets.append(at)
            at += len(p)
        return {"tokens": [p for p, _, _ in toks], "token_logprobs": [lp for _, lp, _ in toks],
                "top_logprobs": [dict(top) for _, _, top in toks],
                "text_offset": offsets}

    def chunk(self, index: int, text: str, finish, event, role: bool = False) -> dict:
        lp = self._logprobs([event]) if event is not None else None
        if self.chat:
            delta = {"role": "assistant", "content": ""} if role else {"content": text}
            choice = {"index": index, "delta": delta, "logprobs": lp, "finish_reason": finish}
            return {"id": self.rid, "object": "chat.completion.chunk", "created": self.created,
                    "model": self.model, "choices": [choice]}
        return {"id": self.rid, "object": "text_completion", "created": self.created, "model": self.model,
                "choices": [{"index": index, "text": text, "logprobs": lp, "finish_reason": finish}]}

    def whole(self, texts: list[str], finish: list, events: list[list[dict]], completion: int) -> dict:
        if self.chat:
            choices = [{"index": i, "message": {"role": "assistant", "content": t},
                        "logprobs": self._logprobs(ev), "finish_reason": f}
                       for i, (t, f, ev) in enumerate(zip(texts, finish, events))]
            obj = "chat.completion"
        else:
            choices = [{"index": i, "text": t, "logprobs": self._logprobs(ev), "finish_reason": f}
                       for i, (t, f, ev) in enumerate(zip(texts, finish, events))]
            obj = "text_completion"
        return {"id": self.rid, "object": obj, "created": self.created, "model": self.model,
                "choices": choices, "usage": self.usage(completion)}

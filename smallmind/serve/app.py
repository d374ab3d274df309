"""The OpenAI-compatible HTTP API (FastAPI), in front of a :class:`~smallmind.serve.scheduler.Scheduler`.

``create_app(engine)`` returns a plain ASGI application: uvicorn runs it for ``smallmind serve``,
and a Ray Serve deployment ingresses it (``smallmind/serve/ray.py``).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi import Request as HttpRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..engine import Engine
from ._backend import Backend
from ._metrics import CONTENT_TYPE_LATEST, ServeMetrics
from ._protocol import (
    ApiError,
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    Limits,
    TokenizeRequest,
    build_requests,
    echo_texts,
    error_param,
)
from ._relay import Mailbox, Relays
from ._response import Body, Run, sse_data
from .scheduler import Handle, QueueFullError, Scheduler

__all__ = ["create_app"]

_POLL_S = 0.25  # how often a waiting handler checks that its client is still there
_KEEPALIVE_S = 5.0  # an SSE comment line this often while a stream has nothing to send


def create_app(
    engine: Engine,
    *,
    parallel: int = 4,
    max_queue: int = 64,
    api_key: str | None = None,
    max_prompt_tokens: int | None = None,
    max_tokens: int | None = None,
    max_body_bytes: int = 1 << 20,
    timeout: float = 600.0,
    queue_timeout: float | None = None,
    prefill_chunk: int = 128,
    model_id: str | None = None,
) -> Any:
    """An ASGI app serving ``engine`` on ``parallel`` slots (one KV cache each).

    ``max_queue`` requests may wait for a slot (more get 503 with ``Retry-After``);
    ``api_key`` makes every route but ``/health`` require ``Authorization: Bearer <key>``;
    ``max_prompt_tokens`` / ``max_tokens`` cap a request's prompt and answer (default: the
    context); ``max_body_bytes`` caps a request body (413 above); ``timeout`` (seconds) caps a
    request from arrival to its last token (generation stops there, finish_reason "length");
    ``queue_timeout`` (default: ``timeout``) caps its wait for a slot (then 503).
    """
    for name, value in (
        ("max_body_bytes", max_body_bytes),
        ("max_prompt_tokens", max_prompt_tokens),
        ("max_tokens", max_tokens),
        ("n_threads", engine.n_threads),
    ):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    backend = Backend(engine)
    limits = Limits(
        max_prompt_tokens=min(max_prompt_tokens or backend.n_ctx - 1, backend.n_ctx - 1),
        max_tokens=min(max_tokens or backend.n_ctx, backend.n_ctx),
    )
    holder: dict[str, Scheduler] = {}
    metrics = ServeMetrics(running=lambda: holder["s"].running, waiting=lambda: holder["s"].waiting)
    relays = Relays()
    scheduler = Scheduler(
        backend,
        parallel=parallel,
        max_queue=max_queue,
        prefill_chunk=prefill_chunk,
        timeout=timeout,
        queue_timeout=queue_timeout,
        metrics=metrics,
        flush=relays.flush,
    ).start()
    holder["s"] = scheduler
    served = _Server(backend, scheduler, relays, limits, model_id or backend.model_id)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await asyncio.to_thread(scheduler.stop)

    app = FastAPI(title="smallmind", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.scheduler = scheduler
    app.state.metrics = metrics

    @app.exception_handler(ApiError)
    async def api_error(request: HttpRequest, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: HttpRequest, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        param = error_param(first.get("loc", ()))
        message = f"{param}: {first.get('msg')}" if param else str(first.get("msg", "invalid request"))
        return JSONResponse(ApiError(400, message, param=param, code=first.get("type")).body(), 400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: HttpRequest, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(ApiError(exc.status_code, str(exc.detail)).body(), exc.status_code)

    @app.get("/health")
    async def health() -> JSONResponse:
        if not scheduler.alive:
            return JSONResponse({"status": "error", "error": repr(scheduler.error)}, 503)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def metrics_route() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {
                        "id": served.model_id,
                        "object": "model",
                        "created": served.created,
                        "owned_by": "smallmind",
                        "context_length": backend.n_ctx,
                    }
                ],
            }
        )

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: HttpRequest) -> Response:
        return await served.complete(body, request)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: HttpRequest) -> Response:
        return await served.complete(body, request)

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest) -> JSONResponse:
        ids = backend.encode(body.content, add_special=body.add_special)
        return JSONResponse({"tokens": ids})

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest) -> JSONResponse:
        bad = next((i for i in body.tokens if not 0 <= i < backend.vocab_size), None)
        if bad is not None:
            raise ApiError(
                400, f"token id {bad} is outside the vocabulary [0, {backend.vocab_size})", param="tokens"
            )
        return JSONResponse({"content": backend.decode(body.tokens)})

    return _Guard(app, api_key=api_key, max_body_bytes=max_body_bytes)


class _Server:
    """Runs one API request: submits its choices, then answers in one body or as SSE."""

    def __init__(self, backend: Backend, scheduler: Scheduler, relays: Relays, limits: Limits, model_id: str):
        self.backend = backend
        self.scheduler = scheduler
        self.relays = relays
        self.limits = limits
        self.model_id = model_id
        self.created = int(time.time())

    async def complete(self, body: Body, http: HttpRequest) -> Response:
        requests, plan = await asyncio.to_thread(build_requests, body, self.backend, self.limits)
        mailbox = self.relays.mailbox()
        handles: list[Handle] = []
        try:
            for index, req in enumerate(requests):
                handles.append(self.scheduler.submit(req, mailbox.sink(index)))
        except QueueFullError as exc:
            self._cancel(handles)
            raise ApiError(
                503,
                f"the server is busy: {exc}",
                type="server_busy",
                code="queue_full",
                headers={"Retry-After": str(exc.retry_after)},
            ) from exc
        except RuntimeError as exc:
            self._cancel(handles)
            raise ApiError(503, str(exc), type="server_error") from exc
        texts = self.backend.logprob_texts if requests and requests[0].logprobs is not None else None
        echo = echo_texts(body, requests, self.backend)
        run = Run(body, self.model_id, len(handles), [len(r.prompt) for r in requests], plan, texts, echo)
        if body.stream:
            return StreamingResponse(
                self._sse(run, mailbox, handles),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        try:
            next_check = time.monotonic() + _POLL_S
            while not run.done:
                for index, event in await mailbox.take(_POLL_S):
                    run.add(index, event)
                if time.monotonic() >= next_check:  # events may flow while nobody listens any more
                    if await http.is_disconnected():
                        return Response(status_code=499)
                    next_check = time.monotonic() + _POLL_S
        finally:
            self._cancel(handles)
        run.raise_failure()
        return JSONResponse(run.response())

    async def _sse(self, run: Run, mailbox: Mailbox, handles: list[Handle]) -> AsyncIterator[str]:
        """The stream's chunks: every event that has arrived goes out in one write."""
        try:
            opening = "".join([sse_data(chunk) for chunk in run.opening_chunks()])
            if opening:
                yield opening
            while not run.done:
                events = await mailbox.take(_KEEPALIVE_S)
                if not events:
                    yield ": keep-alive\n\n"  # also finds out when the client has gone
                    continue
                text = "".join([run.sse(index, event) for index, event in events])
                if run.done:
                    failure = run.failure()
                    if failure is not None:
                        text += sse_data(failure.body())
                    elif run.include_usage:
                        text += sse_data(run.usage_chunk())
                    text += "data: [DONE]\n\n"
                if text:
                    yield text
        finally:  # normal end, or the client disconnected and the response was cancelled
            self._cancel(handles)

    def _cancel(self, handles: list[Handle]) -> None:
        for h in handles:
            h.cancel()
        if handles:
            self.scheduler.wake()


class _Guard:
    """ASGI middleware: the bearer API key, and the request body size limit (read before the app
    sees the body, so an oversized body is refused without being parsed)."""

    def __init__(self, app: Any, *, api_key: str | None, max_body_bytes: int):
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.max_body = max_body_bytes

    @property
    def state(self) -> Any:
        return self.app.state

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.api_key is not None and scope.get("path") != "/health":
            auth = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(auth, b"Bearer " + self.api_key):
                await _send_error(
                    send,
                    ApiError(
                        401, "invalid or missing API key (Authorization: Bearer ...)", code="invalid_api_key"
                    ),
                )
                return
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_body:
                await _send_error(
                    send,
                    ApiError(
                        413,
                        f"the request body is larger than {self.max_body} bytes",
                        code="request_too_large",
                    ),
                )
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()  # later calls wait for the disconnect

        await self.app(scope, replay, send)


async def _send_error(send: Any, error: ApiError) -> None:
    payload = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    if error.status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})

"""The model server: one ``ModelEngine`` behind an OpenAI-compatible HTTP API (notebook 10).

``create_app`` builds a FastAPI app with ``/v1/completions``, ``/v1/chat/completions`` (the model's
chat template), ``/v1/models``, ``/healthz`` (the process is up), ``/readyz`` (a model is loaded) and
Prometheus ``/metrics`` (requests, latency histogram, generated tokens and errors by model version; the
batch size each request was generated in, its wait in the engine's queue, requests coalesced with an
identical one in flight). ``/readyz`` also reports the requests queued for the next batch.
The official ``openai`` client works against it unchanged, and the gateway (``dsnb.serve.gateway``)
talks to it only through this API, so vLLM's OpenAI server can stand in for it.

Bad input gets a clear answer, never a 5xx: malformed JSON or a wrong type -> 422 naming the field;
generation parameters outside their bounds (``max_tokens`` 1..``MAX_TOKENS``, ``temperature`` 0..2,
``top_p`` (0, 1], NaN and infinities included) -> 422; an empty prompt, a user id over
``USER_ID_MAX`` characters or text with a lone surrogate (not valid Unicode) -> 422; a body over
``max_body_bytes`` -> 413; a prompt with more characters than the context could hold -> 400 before it
is tokenised, one that does not fit once tokenised -> 400 with the limit; an unknown model -> 404;
with an API key set, a request without ``Authorization: Bearer KEY`` -> 401. At most
``max_concurrent`` requests are tokenised or generated at once; the next gets 429 with
``Retry-After`` (bounded memory instead of an ever-longer line). The gateway validates its requests
with the same schemas (``CompletionRequest``, ``ChatRequest``).
"""

from __future__ import annotations

import contextlib
import hmac
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from dsnb.serve.engine import Generation, ModelEngine, PromptTooLong
from dsnb.serve.store import USER_ID_MAX

#: The largest ``max_tokens`` a request may ask for.
MAX_TOKENS = 512
#: The largest request body (bytes) the model server and the gateway read; a larger one gets 413 unread.
MAX_BODY_BYTES = 1 << 20
#: Requests the model server tokenises or generates at once by default; the next one gets 429.
MAX_CONCURRENT = 32
#: Latency buckets (seconds) of the request histograms: 1 ms to 30 s.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Batch-size buckets of ``dsnb_model_batch_size``.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


def valid_unicode(text: str) -> str:
    """``text`` unchanged if it is valid Unicode; a lone surrogate (from a JSON ``\\ud800`` escape) raises ValueError."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"holds a lone surrogate ({text[exc.start]!r} at character {exc.start}), which is not "
                         "valid Unicode: send UTF-8 text (a surrogate pair's two halves together)") from None
    return text


#: A string that is valid Unicode (tokenizers, databases and UTF-8 encoders all refuse lone surrogates).
Text = Annotated[str, AfterValidator(valid_unicode)]


class _Params(BaseModel):
    """Generation parameters shared by both endpoints (unknown OpenAI fields are ignored)."""

    model_config = ConfigDict(extra="ignore")
    model: Text
    max_tokens: int = Field(16, ge=1, le=MAX_TOKENS)
    temperature: float = Field(1.0, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    n: int = Field(1, ge=1, le=1)
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)  # what torch.manual_seed takes
    user: Annotated[Text, Field(min_length=1, max_length=USER_ID_MAX)] | None = None
    stream: Literal[False] = False


class CompletionRequest(_Params):
    """``POST /v1/completions``: a plain-text prompt."""

    prompt: Text = Field(min_length=1)


class ChatMessage(BaseModel):
    """One chat turn."""

    role: Literal["system", "user", "assistant"]
    content: Text


class ChatRequest(_Params):
    """``POST /v1/chat/completions``: a conversation, rendered with the model's chat template."""

    messages: list[ChatMessage] = Field(min_length=1)


#: The OpenAI error type of each status (others: ``invalid_request_error``).
ERROR_KINDS = {401: "authentication_error", 403: "permission_error", 404: "not_found_error", 429: "rate_limit_error",
               502: "api_error", 503: "service_unavailable"}


def error_response(status: int, message: str, param: str | None = None, kind: str | None = None) -> JSONResponse:
    """An error in the OpenAI shape (``{"error": {"message", "type", "param", "code"}}``); the type follows the status."""
    kind = kind or ERROR_KINDS.get(status, "invalid_request_error")
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": status}}, status_code=status)


def validation_response(exc: RequestValidationError | ValidationError) -> JSONResponse:
    """422 in the OpenAI error shape, naming the first offending field (all of them under ``detail``)."""
    errors = exc.errors()
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    message = f"{param or 'request body'}: {first.get('msg', 'invalid')}"
    if first.get("type") == "json_invalid":  # loc holds a character position, not a field
        param, message = None, f"the request body is not valid JSON (error at character {loc[0] if loc else '?'})"
    body = {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": 422},
            "detail": [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in errors]}
    return JSONResponse(body, status_code=422)


def bearer_ok(header: str, keys: Collection[str]) -> bool:
    """True if ``header`` is ``Bearer KEY`` for one of ``keys`` (compared in constant time, every key tried)."""
    given = header.encode()
    return any([hmac.compare_digest(given, f"Bearer {k}".encode()) for k in keys])


class WorkLimit:
    """At most ``limit`` requests at work at once; ``slot`` refuses the next one with 429 and ``Retry-After``."""

    def __init__(self, limit: int, what: str = "requests in progress") -> None:
        if limit < 1:
            raise ValueError(f"limit={limit!r}: at least one request must be allowed at a time")
        self.limit, self.what, self.active, self.refused = limit, what, 0, 0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one of the ``limit`` slots for the ``with`` block, or raise ``HTTPException(429)``."""
        with self._lock:
            if self.active >= self.limit:
                self.refused += 1
                raise HTTPException(429, f"the server is busy ({self.limit} {self.what}): retry in a moment",
                                    headers={"Retry-After": "1"})
            self.active += 1
        try:
            yield
        finally:
            with self._lock:
                self.active -= 1


class ServerMetrics:
    """The model server's Prometheus metrics, in a registry of its own (several servers in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("dsnb_model_requests", "Requests by endpoint, status and model version",
                                ["endpoint", "status", "version"], registry=self.registry)
        self.latency = Histogram("dsnb_model_request_seconds", "Request latency by endpoint and model version",
                                 ["endpoint", "version"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.tokens = Counter("dsnb_model_generated_tokens", "Tokens generated by model version", ["version"],
                              registry=self.registry)
        self.errors = Counter("dsnb_model_errors", "Requests that failed, by kind and model version",
                              ["kind", "version"], registry=self.registry)
        self.batch_size = Histogram("dsnb_model_batch_size", "Requests in the batch each request was generated in",
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.queue_wait = Histogram("dsnb_model_queue_seconds", "Seconds a request waited for its batch to start",
                                    buckets=LATENCY_BUCKETS, registry=self.registry)
        self.coalesced = Counter("dsnb_model_coalesced_requests", "Requests answered from an identical request "
                                 "in flight (generated once)", registry=self.registry)
        self.queued = Gauge("dsnb_model_queued_requests", "Requests waiting for the next batch", registry=self.registry)


def too_large_message(max_body_bytes: int) -> str:
    """The 413 message of the model server and the gateway."""
    return (f"the request body is over {max_body_bytes} bytes, the most this server reads: shorten the prompt "
            "(or raise max_body_bytes where the server is started)")


class BodyTooLarge(HTTPException):
    """A request body over the limit (413); raised while the app reads a body sent without a Content-Length."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, too_large_message(max_bytes))


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` gets 413 in the OpenAI error shape, unread.

    A declared ``Content-Length`` over the limit is answered at once; a streamed body is counted as it
    is read and ``BodyTooLarge`` stops it at the limit. (Starlette's own limit answers a plain-text
    "Content Too Large" that does not say what to do.)
    """

    def __init__(self, app: Callable, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or ()).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            exc = BodyTooLarge(self.max_bytes)
            return await error_response(413, exc.detail)(scope, receive, send)
        seen = 0

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, counted, send)


def create_app(engine: ModelEngine, api_key: str | None = None, max_concurrent: int = MAX_CONCURRENT,
               max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """The OpenAI-compatible app serving ``engine`` (see the module docstring for its endpoints and limits)."""
    app = FastAPI(title=f"dsnb model server: {engine.name}")
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    metrics = ServerMetrics()
    work = WorkLimit(max_concurrent)
    app.state.engine, app.state.metrics, app.state.work = engine, metrics, work

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        if not bearer_ok(request.headers.get("authorization", ""), [api_key]):
            raise HTTPException(401, "missing or wrong API key: send 'Authorization: Bearer <key>'")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        endpoint = request.url.path
        metrics.requests.labels(endpoint, "422", engine.version).inc()
        metrics.errors.labels("invalid_request", engine.version).inc()
        return validation_response(exc)

    @app.exception_handler(StarletteHTTPException)  # FastAPI's own (e.g. an unreadable body) as well as ours
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = ERROR_KINDS.get(exc.status_code, "invalid_request_error")
        if request.url.path.startswith("/v1/"):
            metrics.requests.labels(request.url.path, str(exc.status_code), engine.version).inc()
            metrics.errors.labels(kind, engine.version).inc()
        response = error_response(exc.status_code, str(exc.detail), kind=kind)
        response.headers.update(exc.headers or {})
        return response

    def run(endpoint: str, params: _Params, chars: int, ids_of: Callable[[], list[int]]) -> tuple[Generation, str]:
        if params.model not in (engine.name, engine.version):
            raise HTTPException(404, f"model {params.model!r} is not served here; this server serves {engine.name!r}")
        try:
            engine.check_prompt_size(chars)  # a prompt too long to fit is refused untokenised, even when busy
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from exc
        t0 = time.perf_counter()
        with work.slot():
            try:
                ids = ids_of()
                if not ids:
                    raise HTTPException(400, "the prompt is empty once tokenised: send some text")
                gen = engine.generate(ids, params.max_tokens, params.temperature, params.top_p, params.seed)
            except PromptTooLong as exc:
                raise HTTPException(400, str(exc)) from exc
            except ValueError as exc:
                raise HTTPException(400, str(exc)) from exc
        metrics.latency.labels(endpoint, gen.version).observe(time.perf_counter() - t0)
        metrics.requests.labels(endpoint, "200", gen.version).inc()
        metrics.tokens.labels(gen.version).inc(gen.completion_tokens)
        if gen.shared:
            metrics.coalesced.inc()
        else:  # a coalesced answer's batch was counted with the request that queued it
            metrics.batch_size.observe(gen.batch_size)
            metrics.queue_wait.observe(gen.queue_seconds)
        return gen, f"{'chatcmpl' if 'chat' in endpoint else 'cmpl'}-{uuid.uuid4().hex[:24]}"

    def usage(gen: Generation) -> dict[str, int]:
        return {"prompt_tokens": gen.prompt_tokens, "completion_tokens": gen.completion_tokens,
                "total_tokens": gen.prompt_tokens + gen.completion_tokens}

    @app.post("/v1/completions", dependencies=[Depends(authorize)])
    def completions(req: CompletionRequest) -> dict:
        gen, rid = run("/v1/completions", req, len(req.prompt), lambda: engine.text_ids(req.prompt))
        return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": engine.name,
                "system_fingerprint": gen.version,
                "choices": [{"index": 0, "text": gen.text, "logprobs": None, "finish_reason": gen.finish_reason}],
                "usage": usage(gen)}

    @app.post("/v1/chat/completions", dependencies=[Depends(authorize)])
    def chat(req: ChatRequest) -> dict:
        gen, rid = run("/v1/chat/completions", req, sum(len(m.content) for m in req.messages),
                       lambda: engine.chat_ids([m.model_dump() for m in req.messages]))
        return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": engine.name,
                "system_fingerprint": gen.version,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": gen.text},
                             "logprobs": None, "finish_reason": gen.finish_reason}],
                "usage": usage(gen)}

    @app.get("/v1/models", dependencies=[Depends(authorize)])
    def models() -> dict:
        return {"object": "list", "data": [{"id": engine.name, "object": "model", "created": 0, "owned_by": "dsnb",
                                            "version": engine.version, "max_model_len": engine.context_limit}]}

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        ok = engine.ready  # False if the engine was marked down or its batching worker died
        queued = int(getattr(engine, "queued", 0))
        return JSONResponse({"ready": ok, "model": engine.name, "version": engine.version, "queued": queued,
                             "in_progress": work.active}, status_code=200 if ok else 503)

    @app.get("/metrics")
    def prometheus() -> Response:
        metrics.queued.set(int(getattr(engine, "queued", 0)))
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app

"""The A/B gateway and load balancer in front of OpenAI-compatible model servers (notebook 10).

``Gateway`` takes an ``Experiment`` (name, salt, variant weights) and, per variant, a pool of backend
URLs: the course's model server (``dsnb.serve.server``) or any OpenAI-compatible server (vLLM's
``vllm serve MODEL`` on each GPU). For every ``/v1/chat/completions`` or ``/v1/completions`` request:

1. the client must send one of the gateway's client keys (``Authorization: Bearer KEY``; the keys come
   from ``client_keys`` or ``$DSNB_GATEWAY_KEYS``); only ``open_access=True`` turns that off, and the
   gateway says so at start-up;
2. the body is checked with the model server's own schemas (``CompletionRequest``, ``ChatRequest``):
   bad input gets a 4xx naming the field, and never reaches a backend;
3. the user id (OpenAI's ``user`` field, or the ``X-User-Id`` header) is assigned a variant by the
   sticky hash (``dsnb.serve.assignment``);
4. a deterministic request is looked up in the cache under (variant, model version, normalised
   prompt, parameters);
5. on a miss, the healthy backend with the fewest requests in flight gets it (least outstanding
   requests). A connection error marks that backend unhealthy at once; a 5xx counts against it and
   ``max_server_errors`` in a row mark it unhealthy (one client's bad request cannot take a variant
   offline); a 429 (busy) only moves the request on. Either way the next backend is tried
   (failover); active health checks (``/readyz`` and ``/v1/models``) bring a backend back and learn
   its model id and version;
6. one row goes to the event store (user, variant, version, backend, cache hit, status, latency,
   prompt, answer), also for a request refused with 422, and the answer goes back with
   ``X-Variant``, ``X-Cache`` and ``X-Request-Id``.

``POST /v1/feedback`` (``request_id``, ``user``, ``score`` from 0 to 1) records feedback for the
analysis, only from the user who made that request (403 otherwise, 404 for an unknown id). Requests
refused before they have a user (no or wrong key, an unusable user id, a body over
``max_body_bytes``: 413, more than ``max_in_flight`` at once: 429) get no row and are counted in
``dsnb_gateway_rejected_total`` by reason. The gateway has its own ``/healthz``, ``/readyz`` (503
while a variant has no healthy backend or the event store is failing or backed up) and Prometheus
``/metrics``. When it shuts down (SIGTERM included) it drains the event store: every queued row is
committed within the store's ``close_timeout`` (10 s) or set aside in its dead-letter file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

import aiohttp
import anyio
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from dsnb.serve.assignment import assign, check_weights
from dsnb.serve.response_cache import TTLCache, cache_key, cacheable
from dsnb.serve.server import (
    LATENCY_BUCKETS,
    MAX_BODY_BYTES,
    BodyLimit,
    ChatRequest,
    CompletionRequest,
    Text,
    WorkLimit,
    bearer_ok,
    error_response,
    validation_response,
)
from dsnb.serve.store import REQUEST_ID_MAX, USER_ID_MAX, EventStore

logger = logging.getLogger(__name__)

#: Environment variable with the gateway's client keys, comma-separated (used when ``client_keys`` is not given).
GATEWAY_KEYS_ENV = "DSNB_GATEWAY_KEYS"
#: Requests the gateway handles at once by default; the next one gets 429.
MAX_IN_FLIGHT = 256
#: Seconds the gateway keeps an idle connection to a backend for reuse: under the 5 s after which a backend on
#: uvicorn's defaults closes it (see ``dsnb.serve.runner.KEEP_ALIVE_S`` for the servers dsnb starts).
BACKEND_KEEP_ALIVE_S = 2.0
#: Connections the gateway holds to all its backends together (more requests wait for one).
MAX_BACKEND_CONNECTIONS = 200
#: Seconds a health probe of a backend may take.
HEALTH_TIMEOUT_S = 5.0


@dataclass
class Experiment:
    """An A/B experiment: its name, the salt of its hash and the variants' traffic weights."""

    name: str
    salt: str
    weights: dict[str, float]

    def __post_init__(self) -> None:
        self.weights = check_weights(self.weights)

    def variant(self, user_id: str) -> str:
        """The variant ``user_id`` sees for the whole experiment."""
        return assign(user_id, self.salt, self.weights)


@dataclass
class Backend:
    """One OpenAI-compatible model server and what the gateway knows about it."""

    url: str
    api_key: str | None = None
    healthy: bool = True
    outstanding: int = 0
    served: int = 0
    failures: int = 0  # connection failures and 5xx answers, in all
    errors_in_row: int = 0  # 5xx answers since its last good one
    model_id: str | None = None
    version: str | None = None

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


@dataclass
class Pool:
    """The backends of one variant; ``pick`` balances by least outstanding requests."""

    variant: str
    backends: list[Backend] = field(default_factory=list)

    def pick(self, exclude: set[str] = frozenset()) -> Backend | None:
        """The healthy backend not in ``exclude`` with the fewest requests in flight (then the fewest served)."""
        live = [b for b in self.backends if b.healthy and b.url not in exclude]
        return min(live, key=lambda b: (b.outstanding, b.served)) if live else None

    @property
    def version(self) -> str:
        """The model version the pool serves (the healthy backends' versions, joined if they differ)."""
        seen = sorted({b.version or b.model_id or "unknown" for b in self.backends if b.healthy})
        return "+".join(seen) or "unknown"


class FeedbackRequest(BaseModel):
    """``POST /v1/feedback``: a score from 0 (disliked) to 1 (liked) for one of the user's own requests."""

    request_id: Annotated[Text, Field(min_length=1, max_length=REQUEST_ID_MAX)]
    user: Annotated[Text, Field(min_length=1, max_length=USER_ID_MAX)]
    score: float = Field(ge=0.0, le=1.0, allow_inf_nan=False)


class GatewayMetrics:
    """The gateway's Prometheus metrics, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("dsnb_gateway_requests", "Requests by variant, status and cache result",
                                ["variant", "status", "cache"], registry=self.registry)
        self.latency = Histogram("dsnb_gateway_request_seconds", "Gateway latency by variant and cache result",
                                 ["variant", "cache"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.failovers = Counter("dsnb_gateway_failovers", "Requests retried on another backend", ["variant"],
                                 registry=self.registry)
        self.healthy = Gauge("dsnb_gateway_healthy_backends", "Healthy backends per variant", ["variant"],
                             registry=self.registry)
        self.rejected = Counter("dsnb_gateway_rejected", "Requests refused before they had a user (no event row), "
                                "by reason", ["reason"], registry=self.registry)

    def watch_store(self, store: EventStore) -> None:
        """Export the event store's queue length and dead-lettered rows."""
        Gauge("dsnb_gateway_store_queued", "Event rows waiting to be written",
              registry=self.registry).set_function(lambda: store.health()["queued"])
        Gauge("dsnb_gateway_store_dead_lettered", "Event rows set aside in the dead-letter file",
              registry=self.registry).set_function(lambda: store.dead_lettered)


def _prompt_text(body: Mapping[str, Any]) -> str:
    """The prompt as the event store keeps it (chat messages as JSON), for any body, valid or not."""
    if "messages" in body:
        return json.dumps(body["messages"], sort_keys=True, default=str)
    prompt = body.get("prompt", "")
    return prompt if isinstance(prompt, str) else json.dumps(prompt, default=str)


def _json_object(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object; ValueError saying what is wrong otherwise."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"the request body is not valid JSON ({str(exc) or 'nested too deeply'}): send one JSON "
                         "object") from None
    if not isinstance(body, dict):
        raise ValueError("the request body must be a JSON object")
    return body


def client_keys_from(client_keys: Iterable[str] | None, open_access: bool) -> tuple[str, ...]:
    """The keys clients must send: ``client_keys``, else ``$DSNB_GATEWAY_KEYS``; none only with ``open_access``."""
    if open_access:
        if client_keys:
            raise ValueError("client_keys and open_access=True contradict each other: pass one of them")
        return ()
    given = os.environ.get(GATEWAY_KEYS_ENV, "").split(",") if client_keys is None else client_keys
    keys = tuple(k.strip() for k in given if k and k.strip())
    if not keys:
        raise ValueError(f"the gateway needs client keys: pass client_keys=['...'] or set ${GATEWAY_KEYS_ENV}=key1,key2 "
                         "(clients send 'Authorization: Bearer KEY'); to run without client authentication, e.g. "
                         "on loopback in a notebook, pass open_access=True")
    return keys


class Gateway:
    """A/B routing, least-outstanding balancing with health checks and failover, cache and event log.

    ``client_keys`` (or ``$DSNB_GATEWAY_KEYS``) are the keys clients must send; ``open_access=True``
    serves without them (logged as a warning at start-up). ``backend_api_key`` is what the gateway
    sends to its backends. Limits: ``max_body_bytes`` per body (413), ``max_in_flight`` requests at
    once (429), ``max_server_errors`` 5xx in a row before a backend counts as unhealthy, and
    ``feedback_window`` seconds during which the gateway remembers who made a request (older ones are
    looked up in the event store). Taught in notebook 10.
    """

    def __init__(self, experiment: Experiment, pools: Mapping[str, list[str | Backend]], cache: Any | None = None,
                 store: EventStore | None = None, health_interval: float = 2.0, timeout: float = 60.0,
                 backend_api_key: str | None = None, *, client_keys: Iterable[str] | None = None,
                 open_access: bool = False, max_in_flight: int = MAX_IN_FLIGHT, max_body_bytes: int = MAX_BODY_BYTES,
                 max_server_errors: int = 3, feedback_window: float = 7 * 86400.0) -> None:
        missing = set(experiment.weights) - set(pools)
        if missing:
            raise ValueError(f"variants {sorted(missing)} have no backends: give each variant at least one URL")
        if max_server_errors < 1:
            raise ValueError(f"max_server_errors={max_server_errors!r}: at least one 5xx must be seen")
        self.client_keys = client_keys_from(client_keys, open_access)
        self.open_access = open_access
        self.experiment = experiment
        self.pools = {v: Pool(v, [b if isinstance(b, Backend) else Backend(b.rstrip("/"), backend_api_key)
                                  for b in urls]) for v, urls in pools.items()}
        self.cache = cache if cache is not None else TTLCache()
        self.store = store
        self.health_interval, self.timeout = health_interval, timeout
        self.max_body_bytes, self.max_server_errors = max_body_bytes, max_server_errors
        self.work = WorkLimit(max_in_flight, "requests in flight at the gateway")
        self.issued = TTLCache(ttl=feedback_window, max_entries=100_000)  # request id -> its user, for feedback
        self.metrics = GatewayMetrics()
        if store is not None:
            self.metrics.watch_store(store)
        self.client: aiohttp.ClientSession | None = None
        self.app = self._build_app()

    # -- health -------------------------------------------------------------------------------------
    async def check_backend(self, backend: Backend) -> bool:
        """Probe ``/readyz`` and ``/v1/models``; mark the backend healthy or not and learn its model."""
        assert self.client is not None
        try:
            ready, _ = await self._get(backend, "/readyz")
            if ready == 404:  # an OpenAI server without /readyz (vLLM has /health)
                ready, _ = await self._get(backend, "/health")
            status, models = await self._get(backend, "/v1/models")
            ok = ready == 200 and status == 200
            if ok:
                info = json.loads(models)["data"][0]
                backend.model_id, backend.version = info["id"], info.get("version") or info["id"]
        except (aiohttp.ClientError, TimeoutError, KeyError, IndexError, TypeError, ValueError):
            ok = False
        if ok != backend.healthy:
            logger.warning("backend %s is now %s", backend.url, "healthy" if ok else "unhealthy")
        backend.healthy = ok
        if ok:
            backend.errors_in_row = 0
        return ok

    async def _get(self, backend: Backend, path: str) -> tuple[int, bytes]:
        assert self.client is not None
        async with self.client.get(backend.url + path, headers=backend.headers(),
                                   timeout=aiohttp.ClientTimeout(total=HEALTH_TIMEOUT_S)) as resp:
            return resp.status, await resp.read()

    async def check_health(self) -> dict[str, int]:
        """Probe every backend once; the number of healthy backends per variant."""
        for pool in self.pools.values():
            await asyncio.gather(*(self.check_backend(b) for b in pool.backends))
            self.metrics.healthy.labels(pool.variant).set(sum(b.healthy for b in pool.backends))
        return {v: sum(b.healthy for b in p.backends) for v, p in self.pools.items()}

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.health_interval)
            await self.check_health()

    # -- pool changes (registering a new model version) ---------------------------------------------
    def add_backend(self, variant: str, url: str, api_key: str | None = None) -> Backend:
        """Add a backend to ``variant``'s pool; it takes traffic once a health check has found it ready."""
        backend = Backend(url.rstrip("/"), api_key, healthy=False)
        self.pools.setdefault(variant, Pool(variant)).backends.append(backend)
        return backend

    def remove_backend(self, variant: str, url: str) -> None:
        """Take a backend out of ``variant``'s pool (requests already sent to it finish)."""
        pool = self.pools[variant]
        pool.backends = [b for b in pool.backends if b.url != url.rstrip("/")]

    # -- the request path ---------------------------------------------------------------------------
    def _authorized(self, request: Request) -> bool:
        return self.open_access or bearer_ok(request.headers.get("authorization", ""), self.client_keys)

    def _reject(self, reason: str, status: int, message: str, param: str | None = None,
                headers: Mapping[str, str] | None = None) -> JSONResponse:
        """A refusal before the request has a user: counted by reason, no event row."""
        self.metrics.rejected.labels(reason).inc()
        logger.info("refused a request (%s, %d): %s", reason, status, message)
        response = error_response(status, message, param)
        response.headers.update(headers or {})
        return response

    def _unhealthy(self, pool: Pool, backend: Backend, why: str) -> None:
        if backend.healthy:
            logger.warning("backend %s of variant %s is now unhealthy (%s)", backend.url, pool.variant, why)
        backend.healthy = False
        self.metrics.healthy.labels(pool.variant).set(sum(b.healthy for b in pool.backends))

    async def _forward(self, pool: Pool, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any], str | None]:
        """(status, payload, backend URL) of the first backend that answers neither 5xx nor 429 (see step 5)."""
        assert self.client is not None
        tried: set[str] = set()
        busy, failed = 0, None
        while (backend := pool.pick(tried)) is not None:
            tried.add(backend.url)
            data = json.dumps(dict(body, model=backend.model_id or body.get("model")), allow_nan=False).encode()
            backend.outstanding += 1
            try:
                async with self.client.post(backend.url + path, data=data,
                                            timeout=aiohttp.ClientTimeout(total=self.timeout),
                                            headers={**backend.headers(), "content-type": "application/json"}) as resp:
                    status, raw = resp.status, await resp.read()
            except (aiohttp.ClientError, TimeoutError) as exc:  # no answer: connection refused or dropped, timeout
                backend.failures += 1
                self._unhealthy(pool, backend, f"{type(exc).__name__}")
                logger.warning("backend %s failed (%s); failing over", backend.url, type(exc).__name__)
                self.metrics.failovers.labels(pool.variant).inc()
                continue
            finally:
                backend.outstanding -= 1
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = None
            if status == 429:
                busy += 1
                continue
            if status >= 500 or not isinstance(payload, dict):
                backend.failures += 1
                backend.errors_in_row += 1
                error = payload.get("error") if isinstance(payload, dict) else None
                detail = error.get("message") if isinstance(error, dict) else raw[:200].decode(errors="replace")
                failed = (backend.url, status, detail)
                if backend.errors_in_row >= self.max_server_errors:
                    self._unhealthy(pool, backend, f"{backend.errors_in_row} server errors in a row")
                logger.warning("backend %s answered %d; failing over", backend.url, status)
                self.metrics.failovers.labels(pool.variant).inc()
                continue
            backend.errors_in_row = 0
            backend.served += 1
            return status, payload, backend.url
        if failed is not None:
            url, status, detail = failed
            return 502, {"error": {"message": f"the backends of variant {pool.variant!r} failed (last: {url} answered "
                                              f"{status}: {detail}); the failure is logged, retry later",
                                   "type": "api_error", "param": None, "code": 502}}, None
        if busy:
            return 429, {"error": {"message": f"every backend of variant {pool.variant!r} is busy: retry in a moment",
                                   "type": "rate_limit_error", "param": None, "code": 429}}, None
        return 503, {"error": {"message": f"no healthy backend for variant {pool.variant!r}",
                               "type": "service_unavailable", "param": None}}, None

    async def _record(self, table: str, row: dict[str, Any]) -> None:
        if self.store is None:
            return
        try:
            if self.store.full():  # back-pressure: wait (at most put_timeout) without blocking the event loop
                await anyio.to_thread.run_sync(self.store.put, table, row)
            else:
                self.store.put(table, row)
        except (ValueError, RuntimeError) as exc:  # a row the store refuses, or a closed store: set aside
            self.store.dead_letter(table, row, f"{type(exc).__name__}: {exc}")

    async def _cache(self, method: str, *args: Any) -> Any:
        fn = getattr(self.cache, method)
        if getattr(self.cache, "blocking", False):
            return await anyio.to_thread.run_sync(fn, *args)
        return fn(*args)

    async def handle(self, request: Request, path: str) -> Response:
        """Route one completion request (see the module docstring)."""
        t0 = time.perf_counter()
        if not self._authorized(request):
            return self._reject("unauthorized", 401, "missing or wrong client key: send 'Authorization: Bearer <key>' "
                                "with a key the gateway was given (client_keys or $DSNB_GATEWAY_KEYS)")
        try:
            with self.work.slot():
                return await self._route(request, path, t0)
        except HTTPException as exc:  # 429 from the slot, 413 from a streamed body over the limit
            reason = {413: "too_large", 429: "busy"}.get(exc.status_code, "refused")
            return self._reject(reason, exc.status_code, str(exc.detail), headers=exc.headers)

    async def _route(self, request: Request, path: str, t0: float) -> Response:
        try:
            body = _json_object(await request.body())
        except ValueError as exc:
            return self._reject("invalid_json", 422, str(exc))
        user = body.get("user") or request.headers.get("x-user-id")
        if user is None or user == "":
            return self._reject("no_user", 400, "send a user id (the 'user' field or an X-User-Id header): the A/B "
                                "assignment is per user", "user")
        schema = ChatRequest if path.endswith("/chat/completions") else CompletionRequest
        try:
            params = schema.model_validate(dict(body, user=user))
            json.dumps(body, allow_nan=False)  # NaN or an infinity in a field the schema does not know
        except ValidationError as exc:
            bad_user = [e for e in exc.errors() if e["loc"][:1] == ("user",)]
            if bad_user:  # no row: the store could not keep this user id
                return self._reject("invalid_user", 422, f"user: {bad_user[0]['msg']}", "user")
            return await self._refuse(path, user, body, validation_response(exc), t0)
        except (ValueError, RecursionError):
            return await self._refuse(path, user, body, error_response(
                422, "the request body holds NaN or an infinity in a field the gateway does not check: JSON has no "
                "such numbers, send finite ones"), t0)
        return await self._serve(path, user, body, params, t0)

    async def _refuse(self, path: str, user: str, body: dict[str, Any], response: JSONResponse, t0: float) -> Response:
        """A 4xx for a request with a usable user: logged in the event store like any other request."""
        variant = self.experiment.variant(user)
        request_id = uuid.uuid4().hex
        self.metrics.requests.labels(variant, str(response.status_code), "skip").inc()
        await self._record("requests", dict(
            request_id=request_id, user_id=user, experiment=self.experiment.name, variant=variant,
            model_version=self.pools[variant].version, backend="gateway", endpoint=path, cache_hit=False,
            status=response.status_code, latency_ms=(time.perf_counter() - t0) * 1000, prompt=_prompt_text(body)))
        response.headers.update({"X-Variant": variant, "X-Cache": "skip", "X-Request-Id": request_id})
        return response

    async def _serve(self, path: str, user: str, body: dict[str, Any], params: BaseModel, t0: float) -> Response:
        variant = self.experiment.variant(user)
        pool = self.pools[variant]
        request_id = uuid.uuid4().hex
        values = params.model_dump()
        if isinstance(params, ChatRequest):
            prompt = json.dumps([m.model_dump() for m in params.messages], sort_keys=True)
        else:
            prompt = values["prompt"]
        key = cache_key(variant, pool.version, prompt, values) if cacheable(values) else None
        payload = await self._cache("get", key) if key else None
        backend_url, hit = "cache", payload is not None
        if payload is not None:
            status = 200
        else:
            status, payload, backend_url = await self._forward(pool, path, dict(body, user=user))
        answer = None
        if status == 200:
            try:
                choice = payload["choices"][0]
                answer = choice["message"]["content"] if "message" in choice else choice["text"]
            except (KeyError, IndexError, TypeError):
                status, payload = 502, {"error": {"message": f"backend {backend_url} answered 200 with a body that is "
                                                  "not an OpenAI completion", "type": "api_error", "param": None}}
        if status == 200 and not hit and key is not None:
            if payload.get("system_fingerprint") and payload["system_fingerprint"] != pool.version:
                key = cache_key(variant, payload["system_fingerprint"], prompt, values)
            await self._cache("set", key, payload)
        if status == 200:
            payload = dict(payload, id=request_id)
            self.issued.set(request_id, user)
        version = (payload.get("system_fingerprint") or payload.get("model")) if status == 200 else pool.version
        seconds = time.perf_counter() - t0
        cache_label = "hit" if hit else ("miss" if key else "skip")
        self.metrics.requests.labels(variant, str(status), cache_label).inc()
        self.metrics.latency.labels(variant, cache_label).observe(seconds)
        usage = (payload.get("usage") or {}) if status == 200 else {}
        logger.info("request %s user %s -> variant %s (%s, %s) status %d", request_id, user, variant, version,
                    backend_url, status)
        await self._record("requests", dict(
            request_id=request_id, user_id=user, experiment=self.experiment.name, variant=variant,
            model_version=version, backend=backend_url or "none", endpoint=path, cache_hit=hit, status=status,
            latency_ms=seconds * 1000, prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"), prompt=prompt, completion=answer))
        headers = {"X-Variant": variant, "X-Cache": cache_label, "X-Request-Id": request_id}
        if status == 429:
            headers["Retry-After"] = "1"
        return JSONResponse(payload, status_code=status, headers=headers)

    async def feedback(self, request: Request) -> JSONResponse:
        """``POST /v1/feedback``: record a score from the user who made the request (see the module docstring)."""
        if not self._authorized(request):
            return self._reject("unauthorized", 401, "missing or wrong client key: send 'Authorization: Bearer <key>'")
        try:
            fb = FeedbackRequest.model_validate(_json_object(await request.body()))
        except ValidationError as exc:
            self.metrics.rejected.labels("invalid_feedback").inc()
            return validation_response(exc)
        except ValueError as exc:
            return self._reject("invalid_json", 422, f"{exc}: send JSON with request_id, user and a score from 0 to 1")
        owner = self.issued.get(fb.request_id)
        if owner is None and self.store is not None:
            try:
                owner = await anyio.to_thread.run_sync(self.store.request_user, fb.request_id)
            except Exception as exc:  # noqa: BLE001 - the database is away: say so, record nothing unverified
                logger.warning("feedback for %s: the event store cannot be read (%s)", fb.request_id, exc)
                return self._reject("store_unavailable", 503, "the event store cannot be read right now, so the "
                                    "request's user cannot be checked: retry in a moment", headers={"Retry-After": "5"})
        if owner is None:
            return self._reject("unknown_request", 404, f"unknown request id {fb.request_id!r}: send the id of a request "
                                "that was answered (the response's id or its X-Request-Id header)", "request_id")
        if owner != fb.user:
            return self._reject("not_your_request", 403, f"request {fb.request_id!r} was made by another user: "
                                "feedback is only taken from the user who made the request", "user")
        await self._record("feedback", dict(request_id=fb.request_id, user_id=fb.user,
                                            variant=self.experiment.variant(fb.user), score=fb.score))
        return JSONResponse({"recorded": True})

    def _build_app(self) -> FastAPI:
        @contextlib.asynccontextmanager
        async def lifespan(app: FastAPI):
            if self.open_access:
                logger.warning("gateway %r serves without a client key (open_access=True): anyone who can reach it "
                               "can use the backends; keep it on loopback", self.experiment.name)
            # An idle connection to a backend is dropped after BACKEND_KEEP_ALIVE_S, before a backend on uvicorn's
            # default (5 s: vLLM's server, for one) closes it: reusing one the backend is closing at that moment
            # fails without an answer and would count as the backend failing. aiohttp, not httpx: httpcore's pool
            # checks every pooled connection (a system call each) on every request, which at 50 connections
            # cost the gateway more CPU than the rest of the request (benchmarks/serving_load.py).
            self.client = aiohttp.ClientSession(connector=aiohttp.TCPConnector(
                limit=MAX_BACKEND_CONNECTIONS, keepalive_timeout=BACKEND_KEEP_ALIVE_S), auto_decompress=False)
            await self.check_health()
            task = asyncio.create_task(self._health_loop())
            try:
                yield
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                await self.client.close()
                if self.store is not None:  # uvicorn ends the process right after a SIGTERM: commit the rows now
                    await anyio.to_thread.run_sync(self.store.drain)

        app = FastAPI(title=f"dsnb A/B gateway: {self.experiment.name}", lifespan=lifespan)
        app.add_middleware(BodyLimit, max_bytes=self.max_body_bytes)

        @app.exception_handler(StarletteHTTPException)
        async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
            response = error_response(exc.status_code, str(exc.detail))
            response.headers.update(exc.headers or {})
            return response

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Response:
            return await self.handle(request, "/v1/chat/completions")

        @app.post("/v1/completions")
        async def completions(request: Request) -> Response:
            return await self.handle(request, "/v1/completions")

        @app.post("/v1/feedback")
        async def feedback(request: Request) -> JSONResponse:
            return await self.feedback(request)

        @app.get("/v1/models")
        async def models(request: Request) -> JSONResponse:
            if not self._authorized(request):
                return self._reject("unauthorized", 401, "missing or wrong client key: send 'Authorization: Bearer <key>'")
            return JSONResponse({"object": "list", "data": [{"id": self.experiment.name, "object": "model",
                                                             "owned_by": "dsnb"}]})

        @app.get("/healthz")
        async def healthz() -> dict:
            store = "none" if self.store is None else ("; ".join(self.store.health()["problems"]) or "ok")
            return {"status": "ok", "store": store}

        @app.get("/readyz")
        async def readyz() -> JSONResponse:
            healthy = {v: sum(b.healthy for b in p.backends) for v, p in self.pools.items()}
            store = self.store.health() if self.store is not None else None
            ok = all(healthy[v] for v in self.experiment.weights) and (store is None or store["ok"])
            return JSONResponse({"ready": ok, "healthy_backends": healthy, "store": store},
                                status_code=200 if ok else 503)

        @app.get("/metrics")
        async def prometheus() -> Response:
            return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

        return app

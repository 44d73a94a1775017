"""The A/B gateway and load balancer in front of OpenAI-compatible model servers (notebook 10).

``Gateway`` takes an ``Experiment`` (name, salt, variant weights) and, per variant, a pool of backend
URLs: the course's model server (``dsnb.serve.server``) or any OpenAI-compatible server (vLLM's
``vllm serve MODEL`` on each GPU). For every ``/v1/chat/completions`` or ``/v1/completions`` request:

1. the user id (OpenAI's ``user`` field, or the ``X-User-Id`` header) is assigned a variant by the
   sticky hash (``dsnb.serve.assignment``);
2. a deterministic request is looked up in the cache under (variant, model version, normalised
   prompt, parameters);
3. on a miss, the healthy backend with the fewest requests in flight gets it (least outstanding
   requests); a connection error or a 5xx marks that backend unhealthy and the next one is tried
   (failover); active health checks (``/readyz`` and ``/v1/models``) bring it back and learn each
   backend's model id and version;
4. one row goes to the event store (user, variant, version, backend, cache hit, status, latency,
   prompt, answer), and the answer goes back with ``X-Variant``, ``X-Cache`` and ``X-Request-Id``.

``POST /v1/feedback`` (``request_id``, ``user``, ``score``) records feedback for the analysis. The
gateway has its own ``/healthz``, ``/readyz`` and Prometheus ``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from dsnb.serve.assignment import assign, check_weights
from dsnb.serve.cache import TTLCache, cache_key, cacheable
from dsnb.serve.server import LATENCY_BUCKETS
from dsnb.serve.store import EventStore

logger = logging.getLogger(__name__)


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
    failures: int = 0
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


def _prompt_text(body: Mapping[str, Any]) -> str:
    if "messages" in body:
        return json.dumps(body["messages"], sort_keys=True)
    return str(body.get("prompt", ""))


class Gateway:
    """A/B routing, least-outstanding balancing with health checks and failover, cache and event log."""

    def __init__(self, experiment: Experiment, pools: Mapping[str, list[str | Backend]], cache: Any | None = None,
                 store: EventStore | None = None, health_interval: float = 2.0, timeout: float = 60.0,
                 backend_api_key: str | None = None) -> None:
        missing = set(experiment.weights) - set(pools)
        if missing:
            raise ValueError(f"variants {sorted(missing)} have no backends: give each variant at least one URL")
        self.experiment = experiment
        self.pools = {v: Pool(v, [b if isinstance(b, Backend) else Backend(b.rstrip("/"), backend_api_key)
                                  for b in urls]) for v, urls in pools.items()}
        self.cache = cache if cache is not None else TTLCache()
        self.store = store
        self.health_interval, self.timeout = health_interval, timeout
        self.metrics = GatewayMetrics()
        self.client: httpx.AsyncClient | None = None
        self.app = self._build_app()

    # -- health -------------------------------------------------------------------------------------
    async def check_backend(self, backend: Backend) -> bool:
        """Probe ``/readyz`` and ``/v1/models``; mark the backend healthy or not and learn its model."""
        assert self.client is not None
        try:
            ready = await self.client.get(backend.url + "/readyz", timeout=5.0)
            if ready.status_code == 404:  # an OpenAI server without /readyz (vLLM has /health)
                ready = await self.client.get(backend.url + "/health", timeout=5.0)
            models = await self.client.get(backend.url + "/v1/models", headers=backend.headers(), timeout=5.0)
            ok = ready.status_code == 200 and models.status_code == 200
            if ok:
                info = models.json()["data"][0]
                backend.model_id, backend.version = info["id"], info.get("version") or info["id"]
        except (httpx.HTTPError, KeyError, IndexError, ValueError):
            ok = False
        if ok != backend.healthy:
            logger.warning("backend %s is now %s", backend.url, "healthy" if ok else "unhealthy")
        backend.healthy = ok
        return ok

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
    async def _forward(self, pool: Pool, path: str, body: dict[str, Any]) -> tuple[httpx.Response | None, Backend | None]:
        assert self.client is not None
        tried: set[str] = set()
        while (backend := pool.pick(tried)) is not None:
            tried.add(backend.url)
            send = dict(body, model=backend.model_id or body.get("model"))
            backend.outstanding += 1
            try:
                resp = await self.client.post(backend.url + path, json=send, headers=backend.headers(),
                                              timeout=self.timeout)
            except httpx.TransportError as exc:
                resp = None
                logger.warning("backend %s failed (%s); failing over", backend.url, type(exc).__name__)
            finally:
                backend.outstanding -= 1
            if resp is not None and resp.status_code < 500:
                backend.served += 1
                return resp, backend
            backend.healthy, backend.failures = False, backend.failures + 1
            self.metrics.failovers.labels(pool.variant).inc()
        return None, None

    async def _record(self, table: str, row: dict[str, Any]) -> None:
        if self.store is None:
            return
        if self.store.full():  # back-pressure: wait for room without blocking the event loop
            await anyio.to_thread.run_sync(self.store.put, table, row)
        else:
            self.store.put(table, row)

    async def _cache(self, method: str, *args: Any) -> Any:
        fn = getattr(self.cache, method)
        if getattr(self.cache, "blocking", False):
            return await anyio.to_thread.run_sync(fn, *args)
        return fn(*args)

    async def handle(self, request: Request, path: str) -> Response:
        """Route one completion request (see the module docstring)."""
        t0 = time.perf_counter()
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": {"message": "the request body is not valid JSON", "param": None}}, 422)
        if not isinstance(body, dict):
            return JSONResponse({"error": {"message": "the request body must be a JSON object", "param": None}}, 422)
        user = body.get("user") or request.headers.get("x-user-id")
        if not isinstance(user, str) or not user:
            return JSONResponse({"error": {"message": "send a user id (the 'user' field or an X-User-Id header): "
                                           "the A/B assignment is per user", "param": "user"}}, 400)
        variant = self.experiment.variant(user)
        pool = self.pools[variant]
        request_id = uuid.uuid4().hex
        prompt = _prompt_text(body)
        key = cache_key(variant, pool.version, prompt, body) if cacheable(body) else None
        payload = await self._cache("get", key) if key else None
        backend_url, hit = "cache", payload is not None
        if payload is not None:
            status = 200
        else:
            resp, backend = await self._forward(pool, path, body)
            if resp is None:
                status, payload = 503, {"error": {"message": f"no healthy backend for variant {variant!r}",
                                                  "type": "service_unavailable", "param": None}}
            else:
                status, payload, backend_url = resp.status_code, resp.json(), backend.url
                if status == 200 and key is not None:
                    if payload.get("system_fingerprint") and payload["system_fingerprint"] != pool.version:
                        key = cache_key(variant, payload["system_fingerprint"], prompt, body)
                    await self._cache("set", key, payload)
        payload = dict(payload, id=request_id) if status == 200 else payload
        version = (payload.get("system_fingerprint") or payload.get("model")) if status == 200 else pool.version
        seconds = time.perf_counter() - t0
        cache_label = "hit" if hit else ("miss" if key else "skip")
        self.metrics.requests.labels(variant, str(status), cache_label).inc()
        self.metrics.latency.labels(variant, cache_label).observe(seconds)
        usage = payload.get("usage", {}) if status == 200 else {}
        choice = payload["choices"][0] if status == 200 else {}
        answer = choice.get("message", {}).get("content") if "message" in choice else choice.get("text")
        logger.info("request %s user %s -> variant %s (%s, %s) status %d", request_id, user, variant, version,
                    backend_url, status)
        await self._record("requests", dict(
            request_id=request_id, user_id=user, experiment=self.experiment.name, variant=variant,
            model_version=version, backend=backend_url, endpoint=path, cache_hit=hit, status=status,
            latency_ms=seconds * 1000, prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"), prompt=prompt, completion=answer))
        headers = {"X-Variant": variant, "X-Cache": cache_label, "X-Request-Id": request_id}
        return JSONResponse(payload, status_code=status, headers=headers)

    def _build_app(self) -> FastAPI:
        @contextlib.asynccontextmanager
        async def lifespan(app: FastAPI):
            self.client = httpx.AsyncClient(limits=httpx.Limits(max_connections=200))
            await self.check_health()
            task = asyncio.create_task(self._health_loop())
            try:
                yield
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                await self.client.aclose()

        app = FastAPI(title=f"dsnb A/B gateway: {self.experiment.name}", lifespan=lifespan)

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Response:
            return await self.handle(request, "/v1/chat/completions")

        @app.post("/v1/completions")
        async def completions(request: Request) -> Response:
            return await self.handle(request, "/v1/completions")

        @app.post("/v1/feedback")
        async def feedback(request: Request) -> JSONResponse:
            try:
                body = await request.json()
                request_id, user, score = str(body["request_id"]), str(body["user"]), float(body["score"])
            except (ValueError, KeyError, TypeError):
                return JSONResponse({"error": {"message": "send JSON with request_id, user and a numeric score",
                                               "param": None}}, 422)
            await self._record("feedback", dict(request_id=request_id, user_id=user,
                                                variant=self.experiment.variant(user), score=score))
            return JSONResponse({"recorded": True})

        @app.get("/v1/models")
        async def models() -> dict:
            return {"object": "list", "data": [{"id": self.experiment.name, "object": "model", "owned_by": "dsnb"}]}

        @app.get("/healthz")
        async def healthz() -> dict:
            return {"status": "ok"}

        @app.get("/readyz")
        async def readyz() -> JSONResponse:
            healthy = {v: sum(b.healthy for b in p.backends) for v, p in self.pools.items()}
            ok = all(healthy[v] for v in self.experiment.weights)
            return JSONResponse({"ready": ok, "healthy_backends": healthy}, status_code=200 if ok else 503)

        @app.get("/metrics")
        async def prometheus() -> Response:
            return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

        return app

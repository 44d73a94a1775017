"""Idle keep-alive connections: the server keeps them longer than its clients, so reuse never races a close.

A server that closes an idle connection at the moment a client reuses it leaves that request without an
answer (the load test's "status 0"); behind the gateway the same race would count a healthy backend as failed.
"""

from __future__ import annotations

import time

import httpx
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from dsnb.serve.gateway import BACKEND_KEEP_ALIVE_S, Experiment, Gateway
from dsnb.serve.runner import KEEP_ALIVE_S, BackgroundServer

#: httpx's (and uvicorn's) default keep-alive, in seconds.
HTTPX_DEFAULT_KEEP_ALIVE_S = httpx.Limits().keepalive_expiry


def _app() -> FastAPI:
    app = FastAPI()

    @app.get("/ping")
    def ping() -> dict[str, bool]:
        return {"ok": True}

    return app


def _client_port(response: httpx.Response) -> int:
    return response.extensions["network_stream"].get_extra_info("client_addr")[1]


def test_an_idle_connection_outlives_the_clients_own_keep_alive():
    assert KEEP_ALIVE_S > 60 > HTTPX_DEFAULT_KEEP_ALIVE_S  # longer than httpx's and a load balancer's
    with BackgroundServer(_app()) as srv, httpx.Client(limits=httpx.Limits(keepalive_expiry=None)) as http:
        first = http.get(srv.url + "/ping")
        port = _client_port(first)
        time.sleep(HTTPX_DEFAULT_KEEP_ALIVE_S + 1)  # past uvicorn's default 5 s, which would have closed it
        second = http.get(srv.url + "/ping")
        assert first.status_code == second.status_code == 200
        assert _client_port(second) == port, "the server closed an idle connection its client still held"


def test_the_gateway_lets_go_of_idle_backend_connections_before_a_default_backend_closes_them():
    assert 0 < BACKEND_KEEP_ALIVE_S < HTTPX_DEFAULT_KEEP_ALIVE_S


def _recording_backend() -> FastAPI:
    """An OpenAI-shaped backend that records the client port of every completion request it gets."""
    app = FastAPI()
    app.state.ports = []

    @app.get("/readyz")
    def readyz() -> dict[str, bool]:
        return {"ready": True}

    @app.get("/v1/models")
    def models() -> dict:
        return {"data": [{"id": "fake", "version": "fake-1"}]}

    @app.post("/v1/chat/completions")
    def chat(request: Request) -> dict:
        app.state.ports.append(request.client.port)
        return {"choices": [{"message": {"role": "assistant", "content": "ok"}}], "model": "fake"}

    return app


def test_the_gateway_reuses_a_backend_connection_and_drops_it_when_idle():
    backend = _recording_backend()
    gw = Gateway(Experiment("k", "s", {"A": 1}), {"A": []}, health_interval=3600, open_access=True)
    with BackgroundServer(backend) as srv:
        gw.add_backend("A", srv.url)
        with TestClient(gw.app) as client:
            def ask(n: int) -> None:
                body = {"model": "x", "user": "u", "messages": [{"role": "user", "content": f"q{n}"}], "temperature": 0}
                assert client.post("/v1/chat/completions", json=body).status_code == 200

            ask(1), ask(2)  # back to back: one kept-alive connection
            time.sleep(BACKEND_KEEP_ALIVE_S + 1)  # idle longer than the gateway keeps it
            ask(3)
    first, second, third = backend.state.ports
    assert first == second, "the gateway opened a new connection for each request"
    assert third != second, "the gateway kept an idle backend connection past BACKEND_KEEP_ALIVE_S"

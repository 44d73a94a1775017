"""Idle keep-alive connections: the server keeps them longer than its clients, so reuse never races a close.

A server that closes an idle connection at the moment a client reuses it leaves that request without an
answer (the load test's "status 0"); behind the gateway the same race would count a healthy backend as failed.
"""

from __future__ import annotations

import time

import httpx
from fastapi import FastAPI

from dsnb.serve.gateway import BACKEND_KEEP_ALIVE_S
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

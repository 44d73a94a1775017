"""The A/B gateway over real model servers: sticky assignment, cache, balancing, failover, event rows."""

from __future__ import annotations

import concurrent.futures
import logging
import math

import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from sqlalchemy.exc import OperationalError

from dsnb.serve.assignment import assign, bucket
from dsnb.serve.engine import ModelEngine
from dsnb.serve.gateway import Backend, Experiment, Gateway, Pool
from dsnb.serve.response_cache import RedisCache
from dsnb.serve.runner import BackgroundServer
from dsnb.serve.server import create_app
from dsnb.serve.store import EventStore

PROMPT = "Summarize this Python function in one line.\ndef read_config(path):"
DEAD = "http://127.0.0.1:9"  # the discard port: nothing listens there


@pytest.fixture(scope="module")
def servers(base_dir):
    a = ModelEngine.load("dsnb-tiny", version="base-v1", name="course-model")
    b = ModelEngine(a.model, a.tokenizer, "course-model", "base-v2")
    with BackgroundServer(create_app(a)) as sa, BackgroundServer(create_app(b)) as sb:
        yield sa, sb


def ask(client, user, headers=None, **over):
    body = {"model": "exp", "user": user, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 6,
            "temperature": 0}
    return client.post("/v1/chat/completions", json={**body, **over}, headers=headers)


def test_assignment_is_sticky_weighted_and_salted():
    users = [f"user-{i}" for i in range(20000)]
    weights = {"A": 0.9, "B": 0.1}
    first = [assign(u, "s1", weights) for u in users]
    assert first == [assign(u, "s1", weights) for u in users]  # same answer every time, no state
    share_b = first.count("B") / len(users)
    assert abs(share_b - 0.1) < 4 * math.sqrt(0.1 * 0.9 / len(users))
    moved = sum(a != b for a, b in zip(first, [assign(u, "s2", weights) for u in users], strict=True))
    assert moved > 0.1 * len(users)  # a new salt reshuffles
    assert 0 <= bucket("x", "s") < 1
    with pytest.raises(ValueError, match="weights"):
        assign("u", "s", {"A": -1, "B": 2})


def test_pool_picks_least_outstanding_healthy_backend():
    pool = Pool("A", [Backend("a", outstanding=3), Backend("b", outstanding=1), Backend("c", outstanding=0, healthy=False)])
    assert pool.pick().url == "b"
    assert pool.pick(exclude={"b"}).url == "a"
    pool.backends[0].healthy = False
    assert pool.pick(exclude={"b"}) is None


def test_routing_cache_and_event_rows(servers, tmp_path):
    sa, sb = servers
    store = EventStore(f"sqlite:///{tmp_path / 'events.sqlite'}")
    exp = Experiment("exp", "salt-1", {"A": 50, "B": 50})
    gw = Gateway(exp, {"A": [sa.url], "B": [sb.url]}, store=store, health_interval=3600, open_access=True)
    with TestClient(gw.app) as c:
        r1, r2 = ask(c, "alice"), ask(c, "alice")
        assert r1.status_code == r2.status_code == 200
        assert r1.headers["x-variant"] == r2.headers["x-variant"] == exp.variant("alice")
        assert (r1.headers["x-cache"], r2.headers["x-cache"]) == ("miss", "hit")
        assert r1.json()["choices"] == r2.json()["choices"] and r1.json()["id"] != r2.json()["id"]
        assert r1.json()["system_fingerprint"] == ("base-v1" if exp.variant("alice") == "A" else "base-v2")
        assert ask(c, "alice", temperature=0.8).headers["x-cache"] == "skip"  # sampled answers are not cached
        assert ask(c, "alice", max_tokens=5).headers["x-cache"] == "miss"  # other parameters, other key
        assert c.post("/v1/feedback", json={"request_id": r1.json()["id"], "user": "alice", "score": 1}).status_code == 200
        assert c.post("/v1/feedback", json={"user": "alice"}).status_code == 422
        missing = c.post("/v1/chat/completions", json={"model": "exp", "messages": []})
        assert missing.status_code == 400 and missing.json()["error"]["param"] == "user"
        bad = ask(c, "bob", max_tokens=10**6)  # the backend's 422 comes through unchanged
        assert bad.status_code == 422 and bad.json()["error"]["param"] == "max_tokens"
        assert c.get("/readyz").json()["healthy_backends"] == {"A": 1, "B": 1}
        assert 'cache="hit"' in c.get("/metrics").text
    store.flush()
    rows = store.rows("requests")
    assert len(rows) == 5
    assert [r["cache_hit"] for r in rows[:2]] == [False, True]
    assert rows[0]["variant"] == exp.variant("alice") and rows[0]["user_id"] == "alice"
    assert rows[1]["backend"] == "cache" and rows[0]["backend"] in (sa.url, sb.url)
    assert rows[0]["completion"] == r1.json()["choices"][0]["message"]["content"]
    assert store.rows("feedback")[0]["variant"] == exp.variant("alice")
    store.close()


def test_failover_to_a_healthy_backend(servers, caplog):
    sa, _ = servers
    gw = Gateway(Experiment("exp", "s", {"A": 1}), {"A": [sa.url, DEAD]}, health_interval=3600, open_access=True)
    with TestClient(gw.app) as c:
        live, dead = gw.pools["A"].backends
        assert live.healthy and not dead.healthy  # the start-up health check
        dead.healthy, live.served = True, 100  # pretend the dead one looks best: the request must fail over
        with caplog.at_level(logging.WARNING, logger="dsnb.serve.gateway"):
            r = ask(c, "carol", temperature=0.5)
        assert r.status_code == 200
        assert not dead.healthy and dead.failures == 1 and live.served == 101
        assert "failing over" in caplog.text
        assert "dsnb_gateway_failovers_total{variant=\"A\"} 1.0" in c.get("/metrics").text


def test_no_healthy_backend_is_503():
    gw = Gateway(Experiment("exp", "s", {"A": 1}), {"A": [DEAD]}, health_interval=3600, open_access=True)
    with TestClient(gw.app) as c:
        assert c.get("/readyz").status_code == 503
        r = ask(c, "dave")
        assert r.status_code == 503 and "no healthy backend" in r.json()["error"]["message"]


def test_redis_down_bypasses_the_cache_with_a_warning(servers, caplog):
    sa, _ = servers
    cache = RedisCache("redis://127.0.0.1:9/0", timeout=0.2)
    gw = Gateway(Experiment("exp", "s", {"A": 1}), {"A": [sa.url]}, cache=cache, health_interval=3600, open_access=True)
    with TestClient(gw.app) as c, caplog.at_level(logging.WARNING, logger="dsnb.serve.response_cache"):
        statuses = [ask(c, "erin").status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    assert cache.bypassed == 6  # three gets and three sets, none of them an error to the user
    assert caplog.text.count("bypass the cache") == 1  # one warning, not one per request


def test_concurrent_load_loses_nothing(servers, tmp_path):
    """A small load test: 20 clients, 200 requests, half of them repeats; no 5xx, one row per request."""
    sa, sb = servers
    store = EventStore(f"sqlite:///{tmp_path / 'load.sqlite'}", batch_size=16, max_queue=8)
    gw = Gateway(Experiment("exp", "s", {"A": 1, "B": 1}), {"A": [sa.url], "B": [sb.url]}, store=store,
                 health_interval=3600, open_access=True)
    with TestClient(gw.app) as c, concurrent.futures.ThreadPoolExecutor(20) as pool:
        codes = list(pool.map(lambda i: ask(c, f"u{i % 50}", max_tokens=2).status_code, range(200)))
    store.flush()
    assert codes == [200] * 200
    assert store.count("requests") == 200
    rows = store.rows("requests")
    assert sum(r["cache_hit"] for r in rows) >= 100
    store.close()


def test_backend_stopped_mid_run_requests_still_succeed(base_dir):
    a = ModelEngine.load("dsnb-tiny", version="v1", name="course-model")
    s1, s2 = BackgroundServer(create_app(a)).start(), BackgroundServer(create_app(a)).start()
    gw = Gateway(Experiment("exp", "s", {"A": 1}), {"A": [s1.url, s2.url]}, health_interval=3600, open_access=True)
    try:
        with TestClient(gw.app) as c:
            first = [ask(c, f"u{i}", temperature=0.7, max_tokens=2).status_code for i in range(4)]
            s1.stop()
            after = [ask(c, f"u{i}", temperature=0.7, max_tokens=2).status_code for i in range(4)]
            served = {b.url: b.served for b in gw.pools["A"].backends}
    finally:
        s1.stop()
        s2.stop()
    assert first == after == [200] * 4
    assert served[s1.url] >= 1 and served[s2.url] >= 5  # both took traffic, then the survivor took the rest


def test_simulated_users_are_reproducible_and_leave_feedback(servers, corpus, tmp_path):
    from dsnb.serve.simulate import simulate_users, summary_questions

    sa, sb = servers
    questions = summary_questions(corpus.pairs_in("test")[:6])
    runs = []
    for k in range(2):
        store = EventStore(f"sqlite:///{tmp_path / f'sim{k}.sqlite'}")
        gw = Gateway(Experiment("exp", "s", {"A": 1, "B": 1}), {"A": [sa.url], "B": [sb.url]}, store=store,
                     health_interval=3600, open_access=True)
        with BackgroundServer(gw.app) as g:
            rows = simulate_users(g.url, questions, users=5, requests_per_user=2, seed=3, workers=2, max_tokens=4)
        store.close()
        runs.append((rows, store))
    rows, store = runs[0]
    assert len(rows) == 10 and all(r["status"] == 200 for r in rows)
    assert store.count("requests") == 10 and store.count("feedback") == 10
    assert [(r["user"], r["variant"], r["liked"]) for r in rows] == [(r["user"], r["variant"], r["liked"])
                                                                    for r in runs[1][0]]
    assert all(0 <= r["quality"] <= 1 for r in rows)


# -- hostile input at the gateway: 4xx, never 5xx; a bad request never takes a variant offline ---------------

KEY = {"Authorization": "Bearer client-key-1"}


def fake_backend(status: int) -> BackgroundServer:
    """An OpenAI-shaped backend that is healthy but answers every completion with ``status``."""
    app = FastAPI()
    app.state.calls = 0

    @app.get("/readyz")
    def readyz() -> dict:
        return {"ready": True}

    @app.get("/v1/models")
    def models() -> dict:
        return {"data": [{"id": "fake", "version": f"fake-{status}"}]}

    @app.post("/v1/chat/completions")
    def chat() -> JSONResponse:
        app.state.calls += 1
        return JSONResponse({"error": {"message": f"fake {status}"}}, status_code=status)

    return BackgroundServer(app).start()


def raw(client, body: str, path: str = "/v1/chat/completions", **headers):
    return client.post(path, content=body.encode(), headers={"content-type": "application/json", **headers})


def test_clients_need_a_key_unless_access_is_explicitly_open(servers, tmp_path, monkeypatch, caplog):
    sa, _ = servers
    exp = Experiment("exp", "s", {"A": 1})
    monkeypatch.delenv("DSNB_GATEWAY_KEYS", raising=False)
    with pytest.raises(ValueError, match="client_keys"):
        Gateway(exp, {"A": [sa.url]})
    with pytest.raises(ValueError, match="open_access"):
        Gateway(exp, {"A": [sa.url]}, client_keys=["k"], open_access=True)
    store = EventStore(f"sqlite:///{tmp_path / 'e.sqlite'}")
    gw = Gateway(exp, {"A": [sa.url]}, store=store, health_interval=3600, client_keys=["client-key-1", "other"])
    with TestClient(gw.app) as c:
        assert ask(c, "ann").status_code == 401
        wrong = c.post("/v1/chat/completions", json={}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "Authorization: Bearer" in wrong.json()["error"]["message"]
        assert c.post("/v1/feedback", json={"request_id": "x", "user": "ann", "score": 1}).status_code == 401
        assert c.get("/v1/models").status_code == 401
        assert gw.pools["A"].backends[0].served == 0  # nothing reached the backend
        ok = c.post("/v1/chat/completions", headers=KEY, json={"model": "exp", "user": "ann", "max_tokens": 2,
                                                               "messages": [{"role": "user", "content": "hi"}]})
        assert ok.status_code == 200
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200  # probes stay open
        assert 'reason="unauthorized"' in c.get("/metrics").text
    store.flush()
    assert store.count("requests") == 1  # unauthenticated requests are counted in /metrics, not logged as users
    store.close()
    monkeypatch.setenv("DSNB_GATEWAY_KEYS", "env-key-1, env-key-2")
    gw = Gateway(exp, {"A": [sa.url]}, health_interval=3600)
    with TestClient(gw.app) as c:
        assert c.get("/v1/models", headers={"Authorization": "Bearer env-key-2"}).status_code == 200
        assert c.get("/v1/models", headers=KEY).status_code == 401
    with caplog.at_level(logging.WARNING, logger="dsnb.serve.gateway"):
        with TestClient(Gateway(exp, {"A": [sa.url]}, health_interval=3600, open_access=True).app) as c:
            assert c.get("/v1/models").status_code == 200
    assert "without a client key" in caplog.text  # said at start-up


@pytest.mark.parametrize(("body", "param"), [
    ('{"model": "exp", "user": "u1", "temperature": NaN, "messages": [{"role": "user", "content": "hi"}]}', "temperature"),
    ('{"model": "exp", "user": "u1", "temperature": Infinity, "messages": [{"role": "user", "content": "hi"}]}', "temperature"),
    ('{"model": "exp", "user": "u1", "temperature": 1e400, "messages": [{"role": "user", "content": "hi"}]}', "temperature"),
    ('{"model": "exp", "user": "u1", "temperature": "abc", "messages": [{"role": "user", "content": "hi"}]}', "temperature"),
    ('{"model": "exp", "user": "u1", "temperature": null, "messages": [{"role": "user", "content": "hi"}]}', "temperature"),
    ('{"model": "exp", "user": "u1", "temperature": [], "messages": [{"role": "user", "content": "hi"}]}', "temperature"),
    ('{"model": "exp", "user": "u1", "messages": [{"role": "user", "content": "a\\ud800b"}]}', "messages.0.content"),
    ('{"model": "exp", "user": "u1", "messages": []}', "messages"),
    ('{"model": "exp", "user": "u1", "max_tokens": 2, "logit_bias": NaN, "messages": [{"role": "user", "content": "hi"}]}',
     None),
], ids=["nan", "infinity", "1e400", "abc", "null", "list", "surrogate", "no-messages", "nan-unknown-field"])
def test_hostile_bodies_are_422_with_an_event_row(servers, tmp_path, body, param):
    sa, _ = servers
    store = EventStore(f"sqlite:///{tmp_path / 'e.sqlite'}")
    gw = Gateway(Experiment("exp", "s", {"A": 1}), {"A": [sa.url]}, store=store, health_interval=3600,
                 client_keys=["client-key-1"])
    with TestClient(gw.app) as c:
        r = raw(c, body, **KEY)
        assert r.status_code == 422 and r.json()["error"]["param"] == param
        assert gw.pools["A"].backends[0].healthy
        assert ask(c, "u1", max_tokens=2, headers=KEY).status_code == 200
    store.flush()
    rows = store.rows("requests")
    assert [row["status"] for row in rows] == [422, 200] and rows[0]["backend"] == "gateway"
    store.close()


@pytest.mark.parametrize("user", ['"a\\ud800b"', '"' + "u" * 200 + '"', "17", '""'])
def test_a_user_id_the_store_cannot_keep_is_refused_at_the_door(servers, tmp_path, user):
    sa, _ = servers
    store = EventStore(f"sqlite:///{tmp_path / 'e.sqlite'}")
    gw = Gateway(Experiment("exp", "s", {"A": 1}), {"A": [sa.url]}, store=store, health_interval=3600,
                 client_keys=["client-key-1"])
    with TestClient(gw.app) as c:
        r = raw(c, '{"model": "exp", "user": ' + user + ', "messages": [{"role": "user", "content": "hi"}]}', **KEY)
        assert r.status_code in (400, 422) and r.json()["error"]["param"] == "user"
        fb = raw(c, '{"request_id": "x", "user": ' + user + ', "score": 1}', "/v1/feedback", **KEY)
        assert fb.status_code in (400, 422)
    store.flush()
    assert store.count("requests") == store.count("feedback") == store.dead_lettered == 0
    store.close()


def test_a_bad_request_does_not_take_a_variant_offline(servers):
    """An empty prompt is the client's error: the backend stays healthy and the next request is served."""
    sa, _ = servers
    gw = Gateway(Experiment("exp", "s", {"A": 1}), {"A": [sa.url]}, health_interval=3600, open_access=True)
    with TestClient(gw.app) as c:
        empty = c.post("/v1/completions", json={"model": "exp", "user": "u", "prompt": "", "max_tokens": 2})
        assert empty.status_code == 422 and empty.json()["error"]["param"] == "prompt"
        too_long = c.post("/v1/completions", json={"model": "exp", "user": "u", "prompt": "x " * 2000, "max_tokens": 2})
        assert too_long.status_code == 400  # the backend's own 400 comes through
        assert gw.pools["A"].backends[0].healthy
        assert ask(c, "u", max_tokens=2).status_code == 200


def test_server_errors_mark_a_backend_unhealthy_only_when_repeated(servers):
    sa, _ = servers
    broken = fake_backend(500)
    try:
        gw = Gateway(Experiment("exp", "s", {"A": 1}), {"A": [broken.url, sa.url]}, health_interval=3600,
                     open_access=True, max_server_errors=3)
        with TestClient(gw.app) as c:
            bad, good = gw.pools["A"].backends
            good.served = 10**6  # the broken one looks best: each request tries it first
            for i in range(2):
                assert ask(c, f"u{i}", temperature=0.5, max_tokens=2).status_code == 200  # failed over
                assert bad.healthy
            assert ask(c, "u3", temperature=0.5, max_tokens=2).status_code == 200
            assert not bad.healthy and broken.server.config.app.state.calls == 3
            good.healthy = False  # now only the broken backend is left: its error is a 502, not a 500
            bad.healthy = True
            r = ask(c, "u4", temperature=0.5, max_tokens=2)
            assert r.status_code == 502 and "500" in r.json()["error"]["message"]
    finally:
        broken.stop()


def test_busy_backends_are_429_not_unhealthy(servers):
    sa, _ = servers
    busy = fake_backend(429)
    try:
        gw = Gateway(Experiment("exp", "s", {"A": 1}), {"A": [busy.url, sa.url]}, health_interval=3600,
                     open_access=True)
        with TestClient(gw.app) as c:
            b, good = gw.pools["A"].backends
            good.served = 10**6
            assert ask(c, "u", temperature=0.5, max_tokens=2).status_code == 200  # the other backend took it
            good.healthy = False
            r = ask(c, "u", temperature=0.5, max_tokens=2)
            assert r.status_code == 429 and b.healthy
    finally:
        busy.stop()


def test_oversized_bodies_are_413_and_in_flight_requests_are_bounded(servers):
    sa, _ = servers
    gw = Gateway(Experiment("exp", "s", {"A": 1}), {"A": [sa.url]}, health_interval=3600, open_access=True,
                 max_in_flight=1)
    with TestClient(gw.app) as c:
        big = c.post("/v1/completions", json={"model": "exp", "user": "u", "prompt": "x" * 10_000_000})
        assert big.status_code == 413 and "bytes" in big.json()["error"]["message"]
        gw.work.active = 1  # as if one request were in flight
        busy = ask(c, "u", max_tokens=2)
        gw.work.active = 0
        assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
        assert ask(c, "u", max_tokens=2).status_code == 200


def test_feedback_is_bound_to_the_user_of_the_request(servers, tmp_path):
    sa, _ = servers
    store = EventStore(f"sqlite:///{tmp_path / 'e.sqlite'}")
    gw = Gateway(Experiment("exp", "s", {"A": 1}), {"A": [sa.url]}, store=store, health_interval=3600,
                 open_access=True)
    with TestClient(gw.app) as c:
        rid = ask(c, "alice", max_tokens=2).json()["id"]
        assert c.post("/v1/feedback", json={"request_id": rid, "user": "mallory", "score": 0}).status_code == 403
        assert c.post("/v1/feedback", json={"request_id": "f" * 32, "user": "alice", "score": 0}).status_code == 404
        for score in ("NaN", "Infinity", "1e400", "5", '"abc"', "null"):
            r = raw(c, f'{{"request_id": "{rid}", "user": "alice", "score": {score}}}', "/v1/feedback")
            assert r.status_code == 422 and r.json()["error"]["param"] == "score", score
        assert c.post("/v1/feedback", json={"request_id": rid, "user": "alice", "score": 1}).status_code == 200
    store.flush()
    assert [(f["user_id"], f["score"]) for f in store.rows("feedback")] == [("alice", 1.0)]
    gw2 = Gateway(Experiment("exp", "s", {"A": 1}), {"A": [sa.url]}, store=store, health_interval=3600,
                  open_access=True)  # a restarted gateway finds the request in the store
    with TestClient(gw2.app) as c:
        assert c.post("/v1/feedback", json={"request_id": rid, "user": "alice", "score": 0}).status_code == 200
        assert c.post("/v1/feedback", json={"request_id": rid, "user": "bob", "score": 0}).status_code == 403
    store.close()


def test_readyz_reports_a_failing_or_backed_up_store(servers, tmp_path, monkeypatch):
    sa, _ = servers
    store = EventStore(f"sqlite:///{tmp_path / 'e.sqlite'}", retry_seconds=0.05, max_retry_seconds=0.1,
                       put_timeout=0.2, max_queue=3)
    gw = Gateway(Experiment("exp", "s", {"A": 1}), {"A": [sa.url]}, store=store, health_interval=3600,
                 open_access=True)
    with TestClient(gw.app) as c:
        assert c.get("/readyz").status_code == 200 and c.get("/healthz").json()["store"] == "ok"

        def down(*a, **k):
            raise OperationalError("connect", {}, Exception("disk I/O error"))
        monkeypatch.setattr(store.engine, "begin", down)
        monkeypatch.setattr(store.engine, "connect", down)
        statuses = [ask(c, f"u{i}", max_tokens=2).status_code for i in range(6)]  # never hangs: 0.2 s at most
        ready = c.get("/readyz")
        assert statuses == [200] * 6
        assert ready.status_code == 503 and not ready.json()["store"]["ok"]
        assert any("failed" in p for p in ready.json()["store"]["problems"])
        assert c.get("/healthz").status_code == 200 and c.get("/healthz").json()["store"] != "ok"
        monkeypatch.undo()
    store.flush()
    assert store.count("requests") + store.dead_lettered == 6
    store.close()

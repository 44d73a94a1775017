"""The A/B gateway over real model servers: sticky assignment, cache, balancing, failover, event rows."""

from __future__ import annotations

import concurrent.futures
import logging
import math

import pytest
from fastapi.testclient import TestClient

from dsnb.serve.assignment import assign, bucket
from dsnb.serve.cache import RedisCache
from dsnb.serve.engine import ModelEngine
from dsnb.serve.gateway import Backend, Experiment, Gateway, Pool
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


def ask(client, user, **over):
    body = {"model": "exp", "user": user, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 6,
            "temperature": 0}
    return client.post("/v1/chat/completions", json={**body, **over})


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
    gw = Gateway(exp, {"A": [sa.url], "B": [sb.url]}, store=store, health_interval=3600)
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
    gw = Gateway(Experiment("exp", "s", {"A": 1}), {"A": [sa.url, DEAD]}, health_interval=3600)
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
    gw = Gateway(Experiment("exp", "s", {"A": 1}), {"A": [DEAD]}, health_interval=3600)
    with TestClient(gw.app) as c:
        assert c.get("/readyz").status_code == 503
        r = ask(c, "dave")
        assert r.status_code == 503 and "no healthy backend" in r.json()["error"]["message"]


def test_redis_down_bypasses_the_cache_with_a_warning(servers, caplog):
    sa, _ = servers
    cache = RedisCache("redis://127.0.0.1:9/0", timeout=0.2)
    gw = Gateway(Experiment("exp", "s", {"A": 1}), {"A": [sa.url]}, cache=cache, health_interval=3600)
    with TestClient(gw.app) as c, caplog.at_level(logging.WARNING, logger="dsnb.serve.cache"):
        statuses = [ask(c, "erin").status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    assert cache.bypassed == 6  # three gets and three sets, none of them an error to the user
    assert caplog.text.count("bypass the cache") == 1  # one warning, not one per request


def test_concurrent_load_loses_nothing(servers, tmp_path):
    """A small load test: 20 clients, 200 requests, half of them repeats; no 5xx, one row per request."""
    sa, sb = servers
    store = EventStore(f"sqlite:///{tmp_path / 'load.sqlite'}", batch_size=16, max_queue=8)
    gw = Gateway(Experiment("exp", "s", {"A": 1, "B": 1}), {"A": [sa.url], "B": [sb.url]}, store=store,
                 health_interval=3600)
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
    gw = Gateway(Experiment("exp", "s", {"A": 1}), {"A": [s1.url, s2.url]}, health_interval=3600)
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
                     health_interval=3600)
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

"""The event store: one row per event under concurrency, back-pressure instead of drops, retry after a database error."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy.exc import OperationalError

from dsnb.serve.store import EventStore, database_url


def _row(i: int) -> dict:
    return dict(request_id=f"r{i}", user_id=f"u{i % 7}", experiment="e", variant="A", model_version="v1",
                backend="b", endpoint="/v1/chat/completions", cache_hit=False, status=200, latency_ms=1.0,
                prompt_tokens=3, completion_tokens=2, prompt="p", completion="c")


def test_concurrent_writers_lose_nothing_and_a_full_queue_waits(tmp_path):
    store = EventStore(f"sqlite:///{tmp_path / 'e.sqlite'}", batch_size=8, max_queue=4)
    threads = [threading.Thread(target=lambda k=k: [store.put("requests", _row(k * 1000 + i)) for i in range(250)])
               for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store.flush()
    assert store.count("requests") == 2000 == store.written["requests"]
    assert store.waits > 0  # the bounded queue pushed back on the writers
    assert len({r["request_id"] for r in store.rows("requests")}) == 2000
    store.close()


def test_database_errors_are_retried_without_loss(tmp_path, monkeypatch):
    store = EventStore(f"sqlite:///{tmp_path / 'e.sqlite'}", retry_seconds=0.01)
    real_begin, failures = store.engine.begin, [2]

    def flaky_begin():
        if failures[0] > 0:
            failures[0] -= 1
            raise OperationalError("INSERT", {}, Exception("server closed the connection unexpectedly"))
        return real_begin()

    monkeypatch.setattr(store.engine, "begin", flaky_begin)
    for i in range(5):
        store.put("requests", _row(i))
    store.put("feedback", dict(request_id="r1", user_id="u1", variant="A", score=1.0))
    store.flush()
    assert store.retries == 2
    assert store.count("requests") == 5 and store.count("feedback") == 1
    store.close()


def test_bad_use_is_explained(tmp_path, monkeypatch):
    store = EventStore(f"sqlite:///{tmp_path / 'e.sqlite'}")
    with pytest.raises(ValueError, match="unknown table"):
        store.put("clicks", {})
    store.close()
    with pytest.raises(RuntimeError, match="closed"):
        store.put("requests", _row(0))
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://u@127.0.0.1:5432/db")
    assert database_url("x.sqlite").startswith("postgresql")
    monkeypatch.delenv("DATABASE_URL")
    assert database_url(tmp_path / "x.sqlite") == f"sqlite:///{tmp_path / 'x.sqlite'}"

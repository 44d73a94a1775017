"""The event store: one row per event under concurrency, back-pressure instead of drops, retry after a database error;
rows checked before they are queued, a row the database refuses set aside in the dead-letter file, a database that
is down reported and never hanging a put or a shutdown (on SQLite and on a real PostgreSQL)."""

from __future__ import annotations

import json
import threading
import time

import pytest
import test_serve_services as services
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from dsnb.serve.store import EventStore, database_url


def _row(i: int) -> dict:
    return dict(request_id=f"r{i}", user_id=f"u{i % 7}", experiment="e", variant="A", model_version="v1",
                backend="b", endpoint="/v1/chat/completions", cache_hit=False, status=200, latency_ms=1.0,
                prompt_tokens=3, completion_tokens=2, prompt="p", completion="c")


def test_concurrent_writers_lose_nothing_and_a_full_queue_waits(tmp_path):
    with EventStore(f"sqlite:///{tmp_path / 'e.sqlite'}", batch_size=8, max_queue=4) as store:
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


def test_database_errors_are_retried_without_loss(tmp_path, monkeypatch):
    with EventStore(f"sqlite:///{tmp_path / 'e.sqlite'}", retry_seconds=0.01) as store:
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


def test_bad_use_is_explained(tmp_path, monkeypatch):
    with EventStore(f"sqlite:///{tmp_path / 'e.sqlite'}") as store:
        with pytest.raises(ValueError, match="unknown table"):
            store.put("clicks", {})
        store.close()
        with pytest.raises(RuntimeError, match="closed"):
            store.put("requests", _row(0))
        monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://u@127.0.0.1:5432/db")
        assert database_url("x.sqlite").startswith("postgresql")
        monkeypatch.delenv("DATABASE_URL")
        assert database_url(tmp_path / "x.sqlite") == f"sqlite:///{tmp_path / 'x.sqlite'}"


# -- hostile rows (the same tests on SQLite and on the real PostgreSQL of test_serve_services) ------------

postgres_server = services.postgres_server  # a throw-away PostgreSQL cluster on a loopback port


class Database:
    """One database under test: its URL, and a way to take it away and bring it back."""

    def __init__(self, kind: str, url: str, server=None) -> None:
        self.kind, self.url, self.server = kind, url, server
        self._patched: list = []

    def down(self, store: EventStore, monkeypatch) -> None:
        if self.server is not None:
            self.server.stop()
            return
        def refuse(*a, **k):  # SQLite cannot be stopped: its connections fail as a dead server's would
            raise OperationalError("connect", {}, Exception("unable to open database file"))
        monkeypatch.setattr(store.engine, "begin", refuse)
        monkeypatch.setattr(store.engine, "connect", refuse)

    def refuse_scores_over_one(self, store: EventStore) -> None:
        """A rule in the database itself that a row can break although it passed the store's checks."""
        with store.engine.begin() as conn:
            if self.kind == "sqlite":
                conn.execute(text("CREATE TRIGGER score_cap BEFORE INSERT ON feedback WHEN NEW.score > 1 "
                                  "BEGIN SELECT RAISE(ABORT, 'score_cap: score over 1'); END"))
            else:
                conn.execute(text("ALTER TABLE feedback ADD CONSTRAINT score_cap CHECK (score <= 1)"))


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path):
    if request.param == "sqlite":
        return Database("sqlite", f"sqlite:///{tmp_path / 'e.sqlite'}")
    server = request.getfixturevalue("postgres_server")
    return Database("postgresql", server.url, server)


def _feedback(i: int, **over) -> dict:
    return dict(request_id=f"r{i}", user_id=f"u{i % 3}", variant="A", score=1.0) | over


def _dead_lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.timeout(120)
def test_rows_are_checked_before_they_are_queued(database, tmp_path):
    """NaN or 1e400 scores and a 200-character user are refused by put; NUL and a lone surrogate are escaped."""
    dead = tmp_path / "dead.jsonl"
    with EventStore(database.url, dead_letter_path=dead) as store:
        for bad, field in [({"score": float("nan")}, "score"), ({"score": float("1e400")}, "score"),
                           ({"score": "abc"}, "score"), ({"user_id": "u" * 200}, "user_id"),
                           ({"request_id": None}, "request_id"), ({"clicks": 3}, "clicks")]:
            with pytest.raises(ValueError, match=field):
                store.put("feedback", _feedback(0, **bad))
        store.put("requests", _row(1) | {"prompt": "a\x00b", "completion": "x\ud800y", "user_id": "u\x00",
                                         "model_version": "v" * 300})
        store.put("requests", _row(2))
        store.put("feedback", _feedback(1))
        store.flush()
        rows = store.rows("requests")
        assert [r["prompt"] for r in rows] == ["a\\u0000b", "p"]
        assert rows[0]["completion"] == "x\\ud800y" and rows[0]["user_id"] == "u\\u0000"
        assert rows[0]["model_version"] == "v" * 128  # a descriptive value is cut to its column
        assert store.count("feedback") == 1 and store.dead_lettered == 0 and not dead.exists()


@pytest.mark.timeout(120)
def test_a_row_the_database_refuses_goes_to_the_dead_letter_file_and_logging_goes_on(database, tmp_path, caplog):
    dead = tmp_path / "dead.jsonl"
    with EventStore(database.url, batch_size=50, retry_seconds=0.01, dead_letter_path=dead) as store:
        database.refuse_scores_over_one(store)
        for i in range(20):
            store.put("feedback", _feedback(i))
        store.put("feedback", _feedback(99, score=5.0))  # passes put's checks, breaks the database's rule
        for i in range(20, 40):
            store.put("feedback", _feedback(i))
        store.flush()
        assert store.count("feedback") == 40 and store.written["feedback"] == 40
        lines = _dead_lines(dead)
        assert store.dead_lettered == len(lines) == 1
        assert lines[0]["table"] == "feedback" and lines[0]["row"]["score"] == 5.0 and "score_cap" in lines[0]["error"]
        assert "dead-letter" in caplog.text
        store.put("feedback", _feedback(40))  # and the store keeps working
        store.flush()
        assert store.count("feedback") == 41 and store.health()["ok"]


@pytest.mark.timeout(120)
def test_a_database_that_is_down_is_reported_and_neither_put_nor_close_hangs(database, tmp_path, monkeypatch):
    dead = tmp_path / "dead.jsonl"
    with EventStore(database.url, batch_size=2, max_queue=4, retry_seconds=0.05, max_retry_seconds=0.2,
                           put_timeout=0.3, dead_letter_path=dead) as store:
        store.put("feedback", _feedback(0))
        store.flush()
        database.down(store, monkeypatch)
        results = [store.put("feedback", _feedback(i)) for i in range(1, 11)]  # the queue fills; put gives up after 0.3 s
        health = store.health()
        assert not health["ok"] and store.retries > 0
        assert any("writes have failed" in p for p in health["problems"])
        assert any("backed up" in p for p in health["problems"])
        assert results.count(False) >= 1  # the rows that found no room were set aside, not dropped
        t0 = time.monotonic()
        store.close(timeout=1.0)
        assert time.monotonic() - t0 < 10  # bounded: 1 s of draining plus the writer's last attempt
        lines = _dead_lines(dead)
        assert len(lines) == store.dead_lettered
        assert sorted(int(line["row"]["request_id"][1:]) for line in lines) == list(range(1, 11))
        assert any("stayed full" in line["error"] for line in lines) and any("closed" in line["error"] for line in lines)
        assert not store._thread.is_alive()

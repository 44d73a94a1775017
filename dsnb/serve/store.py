"""The gateway's event and feedback store through SQLAlchemy: SQLite by default, PostgreSQL by ``DATABASE_URL`` (notebook 10).

One row per request (who, which variant and model version, which backend, cache hit, status,
latency, the prompt and the answer) and one per feedback event. Rows are written by one background
thread in batches (one transaction each): the request path only puts a row on a bounded queue.
When the queue is full, ``put`` waits for room (back-pressure) instead of dropping the row; when the
database is unavailable (a PostgreSQL restart), the writer keeps the batch and retries it with
backoff. ``flush`` waits until everything put so far is committed. Nothing is lost.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    func,
    insert,
    select,
)
from sqlalchemy.exc import OperationalError, SQLAlchemyError

logger = logging.getLogger(__name__)

#: Environment variable with a database URL (``postgresql+psycopg://user@host:5432/db``); unset -> SQLite.
DATABASE_ENV = "DATABASE_URL"

metadata = MetaData()
requests_table = Table(
    "requests", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", String(64), nullable=False, index=True),
    Column("created_at", DateTime(timezone=True), server_default=func.now()),
    Column("user_id", String(128), nullable=False, index=True),
    Column("experiment", String(64), nullable=False),
    Column("variant", String(64), nullable=False),
    Column("model_version", String(128)),
    Column("backend", String(256)),
    Column("endpoint", String(64)),
    Column("cache_hit", Boolean, nullable=False),
    Column("status", Integer, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("prompt_tokens", Integer),
    Column("completion_tokens", Integer),
    Column("prompt", Text),
    Column("completion", Text),
)
feedback_table = Table(
    "feedback", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", String(64), nullable=False, index=True),
    Column("created_at", DateTime(timezone=True), server_default=func.now()),
    Column("user_id", String(128), nullable=False),
    Column("variant", String(64)),
    Column("score", Float, nullable=False),
)
TABLES = {"requests": requests_table, "feedback": feedback_table}


def database_url(path: str | Path | None = None) -> str:
    """``$DATABASE_URL`` if set, else a SQLite file at ``path`` (default ``events.sqlite`` here)."""
    return os.environ.get(DATABASE_ENV) or f"sqlite:///{Path(path or 'events.sqlite').resolve()}"


class EventStore:
    """Batched, lossless writer of request and feedback rows, plus simple reads for the analysis."""

    def __init__(self, url: str | None = None, batch_size: int = 100, max_queue: int = 1000,
                 retry_seconds: float = 0.2, max_retry_seconds: float = 5.0) -> None:
        self.url = url or database_url()
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        if self.url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        self.engine = create_engine(self.url, **kwargs)
        metadata.create_all(self.engine)
        self.batch_size, self.retry_seconds, self.max_retry_seconds = batch_size, retry_seconds, max_retry_seconds
        self._queue: queue.Queue[tuple[str, dict[str, Any]] | None] = queue.Queue(maxsize=max_queue)
        self.written = {"requests": 0, "feedback": 0}
        self.retries = 0
        self.waits = 0  # puts that had to wait for room (back-pressure)
        self._thread = threading.Thread(target=self._run, name="dsnb-event-writer", daemon=True)
        self._thread.start()

    def put(self, table: str, row: dict[str, Any], timeout: float | None = None) -> None:
        """Queue ``row`` for ``table``; waits while the queue is full (never drops the row)."""
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}; use one of {sorted(TABLES)}")
        if not self._thread.is_alive():
            raise RuntimeError("the event store is closed")
        try:
            self._queue.put_nowait((table, row))
        except queue.Full:
            self.waits += 1
            self._queue.put((table, row), timeout=timeout)

    def full(self) -> bool:
        """True when ``put`` would wait."""
        return self._queue.full()

    def _take_batch(self) -> list[tuple[str, dict[str, Any]] | None]:
        batch = [self._queue.get()]
        while len(batch) < self.batch_size and batch[-1] is not None:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _write(self, items: list[tuple[str, dict[str, Any]]]) -> None:
        delay = self.retry_seconds
        while True:
            try:
                with self.engine.begin() as conn:
                    for name, table in TABLES.items():
                        rows = [r for t, r in items if t == name]
                        if rows:
                            conn.execute(insert(table), rows)
                break
            except (OperationalError, SQLAlchemyError) as exc:
                self.retries += 1
                logger.warning("event store: writing %d rows failed (%s); retrying in %.1f s", len(items),
                               str(exc).splitlines()[0], delay)
                time.sleep(delay)
                delay = min(delay * 2, self.max_retry_seconds)
        for t, _ in items:
            self.written[t] += 1

    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            items = [b for b in batch if b is not None]
            if items:
                self._write(items)
            for _ in batch:
                self._queue.task_done()
            if len(items) < len(batch):  # the close sentinel
                return

    def flush(self) -> None:
        """Wait until every row put so far is committed."""
        self._queue.join()

    def close(self) -> None:
        """Write what is queued, stop the writer thread and release the connections."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self.engine.dispose()

    def count(self, table: str) -> int:
        """Rows in ``table`` (committed ones)."""
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(TABLES[table])).scalar_one()

    def rows(self, table: str) -> list[dict[str, Any]]:
        """Every row of ``table`` as dicts, in insertion order."""
        t = TABLES[table]
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(select(t).order_by(t.c.id))]

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

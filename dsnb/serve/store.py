"""The gateway's event and feedback store through SQLAlchemy: SQLite by default, PostgreSQL by ``DATABASE_URL`` (notebook 10).

One row per request (who, which variant and model version, which backend, cache hit, status,
latency, the prompt and the answer) and one per feedback event. Rows are written by one background
thread in batches (one transaction each): the request path only puts a row on a bounded queue.

No row is ever lost, and no row can stop the others:

- ``put`` checks a row against its table before queueing it (a pydantic model built from the
  columns): a missing column, a wrong type or a non-finite number (NaN, inf) raises ``InvalidRow``
  naming the field; a request or user id longer than its column is refused (cutting it would give
  the row to someone else); a longer descriptive value (model version, backend) is cut to fit; text
  a database cannot store is escaped (NUL, which PostgreSQL refuses, becomes ``\\u0000``; a lone
  surrogate, which is not UTF-8, becomes ``\\udXXX``).
- When the queue is full, ``put`` waits for room (back-pressure) for at most ``put_timeout`` seconds;
  a row that still finds no room goes to the dead-letter file.
- When a batch fails and the database does not answer (a PostgreSQL restart), the writer keeps the
  batch and retries it with backoff. When the database answers but refuses the batch, the writer
  writes the rows one at a time: a row the database still refuses goes to the dead-letter file
  (JSON lines: time, table, the database's error, the row) and logging goes on.
- ``drain`` and ``close`` commit what is queued within ``close_timeout`` seconds (10 by default):
  rows the database has not taken by then go to the dead-letter file, so a gateway stopped by
  SIGTERM (its shutdown drains the store) exits in bounded time without losing a row.
- ``health`` says whether writes are failing or the queue is backed up (the gateway's ``/readyz``).

Every dead-lettered row is counted (``dead_lettered``) and logged. ``flush`` waits until everything
put so far is committed or set aside.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import queue
import threading
import time
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
)
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
    make_url,
    select,
    text,
)
from sqlalchemy.exc import OperationalError

logger = logging.getLogger(__name__)

#: Environment variable with a database URL (``postgresql+psycopg://user@host:5432/db``); unset -> SQLite.
DATABASE_ENV = "DATABASE_URL"
#: The longest user id the store keeps (the gateway refuses longer ones at the door).
USER_ID_MAX = 128
#: The longest request id the store keeps.
REQUEST_ID_MAX = 64
#: Columns whose values are refused rather than cut when too long: a cut id names another user or request.
IDENTITY_COLUMNS = frozenset({"request_id", "user_id"})

metadata = MetaData()
requests_table = Table(
    "requests", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", String(REQUEST_ID_MAX), nullable=False, index=True),
    Column("created_at", DateTime(timezone=True), server_default=func.now()),
    Column("user_id", String(USER_ID_MAX), nullable=False, index=True),
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
    Column("request_id", String(REQUEST_ID_MAX), nullable=False, index=True),
    Column("created_at", DateTime(timezone=True), server_default=func.now()),
    Column("user_id", String(USER_ID_MAX), nullable=False),
    Column("variant", String(64)),
    Column("score", Float, nullable=False),
)
TABLES = {"requests": requests_table, "feedback": feedback_table}


def database_url(path: str | Path | None = None) -> str:
    """``$DATABASE_URL`` if set, else a SQLite file at ``path`` (default ``events.sqlite`` here)."""
    return os.environ.get(DATABASE_ENV) or f"sqlite:///{Path(path or 'events.sqlite').resolve()}"


def storable_text(value: str) -> str:
    """``value`` with what a database cannot store escaped: NUL as ``\\u0000``, a lone surrogate as ``\\udXXX``."""
    if "\x00" in value:
        value = value.replace("\x00", "\\u0000")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def _escaped(value: Any) -> Any:
    return storable_text(value) if isinstance(value, str) else value


def _at_most(length: int) -> Any:
    def check(value: str) -> str:
        if len(value) > length:
            raise ValueError(f"{len(value)} characters, over the limit of {length}: send a shorter id")
        return value
    return check


def _cut_to(length: int, column: str) -> Any:
    def cut(value: str) -> str:
        if len(value) <= length:
            return value
        logger.warning("event store: %s is %d characters; kept the first %d (the column's size)", column,
                       len(value), length)
        return value[:length]
    return cut


def _row_model(table: Table) -> type[BaseModel]:
    """A pydantic model of one row of ``table``, built from its columns (types, sizes, NOT NULL)."""
    fields: dict[str, Any] = {}
    for col in table.columns:
        if col.primary_key or col.server_default is not None:
            continue
        kind: Any = col.type.python_type
        if kind is str:
            length = getattr(col.type, "length", None)
            checks: list[Any] = [BeforeValidator(_escaped)]
            if length and col.name in IDENTITY_COLUMNS:
                checks.append(AfterValidator(_at_most(length)))
            elif length:
                checks.append(AfterValidator(_cut_to(length, col.name)))
            kind = Annotated[str, *checks]
        elif kind is float:
            kind = Annotated[float, Field(allow_inf_nan=False)]
        if col.nullable:
            fields[col.name] = (kind | None, None)
        else:
            fields[col.name] = (kind, ...)
    return create_model(f"{table.name.title()}Row", __config__=ConfigDict(extra="forbid"), **fields)


ROW_MODELS: dict[str, type[BaseModel]] = {name: _row_model(t) for name, t in TABLES.items()}


class InvalidRow(ValueError):
    """A row that does not fit its table; the message names each offending field."""

    def __init__(self, table: str, exc: ValidationError) -> None:
        self.table, self.errors = table, exc.errors(include_url=False)
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'row'}: {e['msg']}" for e in self.errors)
        super().__init__(f"{table} row refused: {problems}")


def validate_row(table: str, row: dict[str, Any]) -> dict[str, Any]:
    """``row`` checked and normalised for ``table`` (see the module docstring); raises ``InvalidRow``."""
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}; use one of {sorted(TABLES)}")
    try:
        return ROW_MODELS[table].model_validate(row).model_dump()
    except ValidationError as exc:
        raise InvalidRow(table, exc) from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:500]


def _default_dead_letter_path(url: str) -> Path:
    database = make_url(url).database if url.startswith("sqlite") else None
    if database and database != ":memory:":
        return Path(database + ".dead-letter.jsonl")
    return Path("events.dead-letter.jsonl").resolve()


Item = tuple[str, dict[str, Any]]


class EventStore:
    """Batched, lossless writer of request and feedback rows, plus simple reads for the analysis (notebook 10)."""

    def __init__(self, url: str | None = None, batch_size: int = 100, max_queue: int = 1000,
                 retry_seconds: float = 0.2, max_retry_seconds: float = 5.0, dead_letter_path: str | Path | None = None,
                 put_timeout: float | None = 10.0, close_timeout: float = 10.0, backed_up_share: float = 0.9) -> None:
        self.url = url or database_url()
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        if self.url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        self.engine = create_engine(self.url, **kwargs)
        metadata.create_all(self.engine)
        self.batch_size, self.retry_seconds, self.max_retry_seconds = batch_size, retry_seconds, max_retry_seconds
        self.max_queue, self.put_timeout, self.close_timeout = max_queue, put_timeout, close_timeout
        self.backed_up_share = backed_up_share
        self.dead_letter_path = Path(dead_letter_path) if dead_letter_path else _default_dead_letter_path(self.url)
        self._queue: queue.Queue[Item | None] = queue.Queue(maxsize=max_queue)
        self.written = {"requests": 0, "feedback": 0}
        self.retries = 0
        self.waits = 0  # puts that had to wait for room (back-pressure)
        self.dead_lettered = 0  # rows set aside in the dead-letter file
        self.last_error: str | None = None
        self._failing_since: float | None = None
        self._deadline: float | None = None  # set by close: after it, what is left goes to the dead-letter file
        self._closed = False
        self._inflight: list[Item] = []
        self._dead_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="dsnb-event-writer", daemon=True)
        self._thread.start()

    # -- the request path ---------------------------------------------------------------------------
    def put(self, table: str, row: dict[str, Any], timeout: float | None = None) -> bool:
        """Check ``row`` (``validate_row``) and queue it for ``table``.

        Waits while the queue is full, for at most ``timeout`` seconds (default ``put_timeout``; None
        waits for ever); a row that finds no room by then goes to the dead-letter file. Returns True
        when queued, False when set aside. Raises ``InvalidRow`` for a row that does not fit its table.
        """
        clean = validate_row(table, row)
        if self._closed or not self._thread.is_alive():
            raise RuntimeError("the event store is closed")
        try:
            self._queue.put_nowait((table, clean))
            return True
        except queue.Full:
            self.waits += 1
        wait = self.put_timeout if timeout is None else timeout
        try:
            self._queue.put((table, clean), timeout=wait)
            return True
        except queue.Full:
            self._dead_letter([(table, clean)], f"the write queue stayed full for {wait:g} s "
                              f"(last database error: {self.last_error or 'none'})")
            return False

    def full(self) -> bool:
        """True when ``put`` would wait."""
        return self._queue.full()

    def dead_letter(self, table: str, row: dict[str, Any], error: str) -> None:
        """Append ``row`` and ``error`` to the dead-letter file (one JSON line), count it and log it."""
        self._dead_letter([(table, row)], error)

    def _dead_letter(self, items: list[Item], error: str) -> None:
        if not items:
            return
        now = dt.datetime.now(dt.UTC).isoformat()
        lines = "".join(json.dumps({"time": now, "table": t, "error": error, "row": r}, default=str) + "\n"
                        for t, r in items)
        with self._dead_lock:
            try:
                self.dead_letter_path.parent.mkdir(parents=True, exist_ok=True)
                with self.dead_letter_path.open("a", encoding="utf-8") as f:
                    f.write(lines)
            except OSError as exc:  # the file is the last resort: the rows go to the log in full
                logger.error("event store: cannot write the dead-letter file %s (%s); the rows are:\n%s",
                             self.dead_letter_path, exc, lines)
            self.dead_lettered += len(items)
        logger.error("event store: %d row(s) went to the dead-letter file %s: %s", len(items), self.dead_letter_path,
                     error)

    # -- the writer thread --------------------------------------------------------------------------
    def _take_batch(self) -> list[Item | None]:
        batch = [self._queue.get()]
        while len(batch) < self.batch_size and batch[-1] is not None:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _insert(self, items: list[Item]) -> None:
        with self.engine.begin() as conn:
            for name, table in TABLES.items():
                rows = [r for t, r in items if t == name]
                if rows:
                    conn.execute(insert(table), rows)

    def _reachable(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except Exception:  # noqa: BLE001 - any failure here means "not reachable"
            return False

    def _past_deadline(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline

    def _write(self, items: list[Item]) -> None:
        """Commit ``items``: retry while the database is away; set aside the rows it refuses while it answers."""
        delay, attempts = self.retry_seconds, 0
        while True:
            if self._past_deadline():
                self._dead_letter(items, f"not committed before the store closed (last database error: "
                                         f"{self.last_error or 'none'})")
                return
            try:
                self._insert(items)
            except Exception as exc:  # noqa: BLE001 - the database's failure (retry) or the rows' (set aside)
                attempts += 1
                error = f"{type(exc).__name__}: {_first_line(exc)}"
                # an OperationalError from a database that answers may pass (SQLite "database is locked"): retry it twice
                if self._reachable() and not (isinstance(exc, OperationalError) and attempts < 3):
                    if len(items) == 1:
                        self._dead_letter(items, f"the database refused the row: {error}")
                    else:
                        logger.warning("event store: the database refused a batch of %d rows (%s); writing them "
                                       "one at a time", len(items), error)
                        for item in items:
                            self._write([item])
                    return
                self.retries += 1
                self.last_error = error
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                logger.warning("event store: writing %d rows failed (%s); retrying in %.1f s", len(items), error, delay)
                time.sleep(delay if self._deadline is None else max(0.0, min(delay, self._deadline - time.monotonic())))
                delay = min(delay * 2, self.max_retry_seconds)
                continue
            self._failing_since = None
            for t, _ in items:
                self.written[t] += 1
            return

    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            items = [b for b in batch if b is not None]
            if items:
                self._inflight = items
                self._write(items)
                self._inflight = []
            for _ in batch:
                self._queue.task_done()
            if len(items) < len(batch):  # the close sentinel
                return

    # -- state and shutdown -------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """``ok`` unless the writer is stopped, writes are failing or the queue is backed up; ``problems`` says which."""
        queued = self._queue.qsize()
        problems = []
        if self._closed or not self._thread.is_alive():
            problems.append("the event store is closed")
        if self._failing_since is not None:
            problems.append(f"writes have failed for {time.monotonic() - self._failing_since:.0f} s "
                            f"({self.last_error}); rows wait in the queue")
        if queued >= self.backed_up_share * self.max_queue:
            problems.append(f"the write queue is backed up: {queued} of {self.max_queue} rows")
        return {"ok": not problems, "problems": problems, "queued": queued, "max_queue": self.max_queue,
                "written": dict(self.written), "retries": self.retries, "dead_lettered": self.dead_lettered}

    def flush(self) -> None:
        """Wait until every row put so far is committed (or set aside in the dead-letter file)."""
        self._queue.join()

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every row put so far is committed, for at most ``timeout`` seconds (default ``close_timeout``).

        Rows still waiting then (the database is down) go to the dead-letter file; the store stays
        open. The gateway calls this when it shuts down (uvicorn ends the process right after a
        SIGTERM). Returns True when everything was committed.
        """
        deadline = time.monotonic() + (self.close_timeout if timeout is None else timeout)
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks and (left := deadline - time.monotonic()) > 0:
                self._queue.all_tasks_done.wait(left)
            if not self._queue.unfinished_tasks:
                return True
        # the writer may still commit its current batch: duplicates rather than losses
        self._dead_letter(list(self._inflight) + self._drain(), "not committed when the gateway shut down (last "
                          f"database error: {self.last_error or 'none'})")
        return False

    def _drain(self) -> list[Item]:
        left: list[Item] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return left
            self._queue.task_done()
            if item is not None:
                left.append(item)

    def close(self, timeout: float | None = None) -> None:
        """Commit what is queued, stop the writer and release the connections, within ``timeout`` seconds.

        ``timeout`` defaults to ``close_timeout``. Rows not committed by then (the database is down)
        go to the dead-letter file, so closing never hangs and never drops a row. Closing twice is fine.
        """
        timeout = self.close_timeout if timeout is None else timeout
        self._closed = True
        if self._thread.is_alive():
            self._deadline = time.monotonic() + timeout
            for wait in (max(0.0, self._deadline - time.monotonic()), 2.0):  # past the deadline the queue empties fast
                try:
                    self._queue.put(None, timeout=wait)
                    break
                except queue.Full:
                    continue
            self._thread.join(max(0.0, self._deadline - time.monotonic()) + 2.0)
        left = self._drain()  # put after the sentinel, or the writer is stuck inside a database call
        if self._thread.is_alive():
            left = list(self._inflight) + left  # it may still commit these: duplicates rather than losses
            self._queue.put_nowait(None)
        self._dead_letter(left, "not committed before the store closed (last database error: "
                                f"{self.last_error or 'none'})")
        self.engine.dispose()

    # -- reads --------------------------------------------------------------------------------------
    def count(self, table: str) -> int:
        """Rows in ``table`` (committed ones)."""
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(TABLES[table])).scalar_one()

    def rows(self, table: str) -> list[dict[str, Any]]:
        """Every row of ``table`` as dicts, in insertion order."""
        t = TABLES[table]
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(select(t).order_by(t.c.id))]

    def request_user(self, request_id: str) -> str | None:
        """The user of the successful (status 200) request ``request_id``, or None if there is none committed."""
        t = requests_table
        with self.engine.connect() as conn:
            return conn.execute(select(t.c.user_id).where(t.c.request_id == request_id, t.c.status == 200)
                                .limit(1)).scalar_one_or_none()

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

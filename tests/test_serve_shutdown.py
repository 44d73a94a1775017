"""SIGTERM to the gateway started from the command line: it drains its event queue and exits in bounded time.

The gateway's only backend is the discard port (nothing listens), so every request is answered 503
at once and still leaves one event row. With SQLite every row is committed before the process exits;
with PostgreSQL stopped under it, ``/readyz`` reports the failing store and SIGTERM still ends the
process within the store's ``close_timeout`` (10 s) plus uvicorn's shutdown, every row either committed
or in the dead-letter file. (uvicorn re-raises the SIGTERM once it has shut down, so the exit status
is -15; the rows are drained by the gateway's own shutdown before that.)
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import httpx
import pytest
import test_serve_services as services

from dsnb.serve.runner import free_port
from dsnb.serve.store import EventStore

postgres_server = services.postgres_server  # a throw-away PostgreSQL cluster on a loopback port
KEY = {"Authorization": "Bearer k"}
#: Seconds SIGTERM may take: the store's close_timeout (10 s) plus uvicorn's shutdown and the interpreter's exit.
EXIT_WITHIN = 25.0


def _start_gateway(tmp_path, database_url: str | None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(DSNB_GATEWAY_KEYS="k", OMP_NUM_THREADS="1", **({"DATABASE_URL": database_url} if database_url else {}))
    log = (tmp_path / "gateway.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "dsnb.serve", "gateway", "--variant", "A=http://127.0.0.1:9",
                             "--database", str(tmp_path / "events.sqlite"), "--port", str(port)],
                            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(url + "/healthz").status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("the gateway did not come up:\n" + (tmp_path / "gateway.log").read_text()[-3000:])
        time.sleep(0.1)


def _send(url: str, n: int, tag: str) -> list[int]:
    with httpx.Client(base_url=url, headers=KEY) as client:
        return [client.post("/v1/chat/completions", json={"model": "m", "user": f"{tag}-{i}", "max_tokens": 2,
                                                          "messages": [{"role": "user", "content": "hi"}]}).status_code
                for i in range(n)]


def _terminate(proc: subprocess.Popen) -> float:
    t0 = time.monotonic()
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(EXIT_WITHIN)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    return time.monotonic() - t0


@pytest.mark.timeout(180)
def test_sigterm_commits_every_queued_row_on_sqlite(tmp_path):
    proc, url = _start_gateway(tmp_path, None)
    lock = sqlite3.connect(tmp_path / "events.sqlite", isolation_level=None)
    try:
        lock.execute("BEGIN IMMEDIATE")  # another writer holds the database: the gateway's rows wait in its queue
        assert _send(url, 300, "u") == [503] * 300  # valid requests, no healthy backend: one row each
        proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        lock.execute("ROLLBACK")  # the database is free again while the gateway shuts down
    finally:
        lock.close()
        seconds = _terminate(proc)
    assert proc.returncode in (0, -signal.SIGTERM) and seconds < EXIT_WITHIN
    with EventStore(f"sqlite:///{tmp_path / 'events.sqlite'}") as store:
        assert store.count("requests") == 300
        store.close()
        assert not (tmp_path / "events.sqlite.dead-letter.jsonl").exists()


@pytest.mark.timeout(240)
def test_sigterm_with_postgres_down_exits_in_bounded_time_without_losing_rows(tmp_path, postgres_server):
    proc, url = _start_gateway(tmp_path, postgres_server.url)
    try:
        assert _send(url, 50, "before") == [503] * 50
        time.sleep(1.0)  # the writer commits them
        postgres_server.stop()
        assert _send(url, 50, "during") == [503] * 50  # requests are still answered while the store is down
        ready = httpx.get(url + "/readyz")
        assert ready.status_code == 503 and not ready.json()["store"]["ok"]
        assert any("failed" in p for p in ready.json()["store"]["problems"])
    finally:
        seconds = _terminate(proc)
    assert proc.returncode in (0, -signal.SIGTERM) and seconds < EXIT_WITHIN
    dead = [json.loads(line) for line in (tmp_path / "events.dead-letter.jsonl").read_text().splitlines()]
    postgres_server.start()
    with EventStore(postgres_server.url) as store:
        committed = {r["user_id"] for r in store.rows("requests")}
        store.close()
        set_aside = {d["row"]["user_id"] for d in dead}
        assert committed | set_aside == {f"{k}-{i}" for k in ("before", "during") for i in range(50)}
        assert {f"during-{i}" for i in range(50)} <= set_aside

"""The Redis cache and the PostgreSQL event store against real servers started on free loopback ports.

``redis-server`` and PostgreSQL come from Debian (apt-packages.txt). PostgreSQL refuses to run as
root, so as root the cluster is created and started as the ``postgres`` system user. Redis is killed
mid-run (requests must keep succeeding, bypassing the cache) and PostgreSQL is stopped mid-run (no
row may be lost). A machine without the servers skips these tests and says which binary is missing.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from dsnb.serve.engine import ModelEngine
from dsnb.serve.gateway import Experiment, Gateway
from dsnb.serve.response_cache import RedisCache
from dsnb.serve.runner import BackgroundServer, free_port
from dsnb.serve.server import create_app
from dsnb.serve.store import EventStore


def _wait(ok, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not come up within {timeout} s")
        time.sleep(0.05)


class RedisProcess:
    """``redis-server`` on a loopback port, no persistence; ``kill`` and ``start`` again on the same port."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary, self.workdir, self.port = binary, workdir, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        import redis

        self.proc = subprocess.Popen([self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.workdir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.exceptions.ConnectionError:
                return False
        _wait(up, "redis-server")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


@pytest.fixture()
def redis_server(tmp_path):
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (Debian package redis-server, see apt-packages.txt)")
    server = RedisProcess(binary, tmp_path)
    try:  # a start-up that fails half-way still stops the process
        server.start()
        yield server
    finally:
        server.kill()


def _pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


class PostgresProcess:
    """A throw-away PostgreSQL cluster in a temporary directory (as the ``postgres`` user when run as root)."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="dsnb-pg-"))
        self.data, self.port = self.root / "data", free_port()
        self.url = f"postgresql+psycopg://dsnb@127.0.0.1:{self.port}/postgres"
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        try:
            if self.as_user:
                shutil.chown(self.root, "postgres")
            self._run(_pg_bin("initdb"), "-D", self.data, "-A", "trust", "-U", "dsnb", "-N")
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise

    def _run(self, *args) -> None:
        subprocess.run(self.as_user + [str(a) for a in args], check=True, capture_output=True)

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(_pg_bin("pg_ctl"), "-D", self.data, "-o", opts, "-l", self.root / "log", "-w", "start")

    def stop(self) -> None:
        self._run(_pg_bin("pg_ctl"), "-D", self.data, "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        subprocess.run(self.as_user + [_pg_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture()
def postgres_server():
    if _pg_bin("initdb") is None or _pg_bin("pg_ctl") is None:
        pytest.skip("PostgreSQL is not installed (Debian package postgresql, see apt-packages.txt)")
    pytest.importorskip("psycopg", reason="the PostgreSQL driver comes with the serve extra (psycopg[binary])")
    server = PostgresProcess()
    try:  # a start-up that fails half-way still stops the cluster and removes its directory
        server.start()
        yield server
    finally:
        server.remove()


@pytest.fixture(scope="module")
def model_server(base_dir):
    engine = ModelEngine.load("dsnb-tiny", version="v1", name="course-model")
    with BackgroundServer(create_app(engine)) as srv:
        yield srv


def _ask(client, user: str):
    return client.post("/v1/chat/completions", json={"model": "m", "user": user, "max_tokens": 3, "temperature": 0,
                                                     "messages": [{"role": "user", "content": "def f(x):"}]})


def test_redis_cache_serves_hits_and_survives_redis_being_killed(redis_server, model_server, caplog):
    cache = RedisCache(redis_server.url, ttl=60, timeout=0.2, warn_every=3600)
    cache.set("k", {"answer": 1})
    assert cache.get("k") == {"answer": 1}
    assert 0 < cache.client.ttl(cache.prefix + "k") <= 60  # stored with an expiry
    gw = Gateway(Experiment("e", "s", {"A": 1}), {"A": [model_server.url]}, cache=cache, health_interval=3600,
                 open_access=True)
    with TestClient(gw.app) as c, caplog.at_level(logging.WARNING, logger="dsnb.serve.response_cache"):
        first = [_ask(c, "u").headers["x-cache"] for _ in range(2)]
        redis_server.kill()
        during = [_ask(c, "u") for _ in range(3)]
        redis_server.start()
        after = [_ask(c, "u").headers["x-cache"] for _ in range(2)]
    assert first == ["miss", "hit"]
    assert [r.status_code for r in during] == [200, 200, 200] and cache.bypassed == 6
    assert "bypass the cache" in caplog.text
    assert after == ["miss", "hit"]  # the restarted Redis is empty, then fills again


def test_postgres_store_loses_nothing_across_a_restart(postgres_server):
    with EventStore(postgres_server.url, batch_size=10, retry_seconds=0.05, max_retry_seconds=0.2) as store:
        row = dict(user_id="u", experiment="e", variant="A", model_version="v1", backend="b", endpoint="/v1/x",
                   cache_hit=False, status=200, latency_ms=1.0)
        for i in range(100):
            store.put("requests", dict(row, request_id=f"before-{i}"))
        store.flush()
        postgres_server.stop()
        for i in range(100):  # the writer cannot commit these while the server is down: it retries
            store.put("requests", dict(row, request_id=f"during-{i}"))
        store.put("feedback", dict(request_id="during-0", user_id="u", variant="A", score=1.0))
        _wait(lambda: store.retries > 0, "a failed write")
        postgres_server.start()
        store.flush()
        assert store.count("requests") == 200 and store.count("feedback") == 1
        assert {r["request_id"] for r in store.rows("requests")} == {f"{k}-{i}" for k in ("before", "during")
                                                                      for i in range(100)}


@pytest.mark.timeout(120)
def test_hostile_rows_through_the_gateway_do_not_stall_postgres(postgres_server, model_server):
    """A prompt with NUL (PostgreSQL text refuses it) is stored escaped; a 200-character user id (over varchar(128))
    is refused at the door; the rows after them are committed."""
    with EventStore(postgres_server.url, retry_seconds=0.05) as store:
        gw = Gateway(Experiment("e", "s", {"A": 1}), {"A": [model_server.url]}, store=store, health_interval=3600,
                     open_access=True)
        with TestClient(gw.app) as c:
            nul = c.post("/v1/completions", json={"model": "m", "user": "u", "prompt": "def f(x):\u0000", "max_tokens": 2})
            long_user = _ask(c, "u" * 200)
            feedback = c.post("/v1/feedback", json={"request_id": nul.json()["id"], "user": "u", "score": 1})
            after = _ask(c, "v")
        assert (nul.status_code, long_user.status_code, feedback.status_code, after.status_code) == (200, 422, 200, 200)
        assert long_user.json()["error"]["param"] == "user"
        store.flush()
        rows = store.rows("requests")
        assert [(r["user_id"], r["prompt"]) for r in rows][0] == ("u", "def f(x):\\u0000") and len(rows) == 2
        assert store.count("feedback") == 1 and store.dead_lettered == 0

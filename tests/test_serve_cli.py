"""``python -m dsnb.serve``: argument errors are explained; the model server starts from the command line."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest

from dsnb.serve.__main__ import _variants, _weights, main
from dsnb.serve.runner import free_port


def test_variant_and_weight_specs():
    assert _variants(["A=http://h:1,http://h:2", "B=http://h:3"]) == {"A": ["http://h:1", "http://h:2"], "B": ["http://h:3"]}
    assert _weights("A=90,B=10", ["A", "B"]) == {"A": 90.0, "B": 10.0}
    assert _weights(None, ["A", "B"]) == {"A": 1.0, "B": 1.0}
    with pytest.raises(SystemExit, match="NAME=URL"):
        _variants(["http://h:1"])
    with pytest.raises(SystemExit, match="NAME=NUMBER"):
        _weights("A=ninety", ["A"])
    with pytest.raises(SystemExit):
        main(["gateway"])  # --variant is required


def test_model_server_from_the_command_line(base_dir):
    port = free_port()
    env = dict(os.environ, DSNB_API_KEY="k", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "dsnb.serve", "model", "--model", "dsnb-tiny", "--name", "m",
                             "--version", "cli-v1", "--max-batch", "4", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.2)
        url = f"http://127.0.0.1:{port}/v1/models"
        assert httpx.get(url).status_code == 401
        assert httpx.get(url, headers={"Authorization": "Bearer k"}).json()["data"][0]["version"] == "cli-v1"
    finally:
        proc.terminate()
        proc.wait(30)


def test_gateway_without_client_keys_says_what_to_do(monkeypatch, tmp_path):
    """No $DSNB_GATEWAY_KEYS and no --open-access: a clear message before anything starts, not a traceback."""
    monkeypatch.delenv("DSNB_GATEWAY_KEYS", raising=False)
    with pytest.raises(SystemExit, match="DSNB_GATEWAY_KEYS.*--open-access"):
        main(["gateway", "--variant", "A=http://127.0.0.1:9", "--database", str(tmp_path / "e.sqlite")])
    assert not (tmp_path / "e.sqlite").exists()  # refused before the store was opened


def test_gateway_open_access_and_keys_from_the_command_line(monkeypatch, tmp_path):
    import uvicorn

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.setdefault("app", app))
    base = ["gateway", "--variant", "A=http://127.0.0.1:9", "--database", str(tmp_path / "e.sqlite")]
    monkeypatch.setenv("DSNB_GATEWAY_KEYS", "k1,k2")
    assert main(base) == 0
    from fastapi.testclient import TestClient

    with TestClient(seen.pop("app")) as client:
        assert client.get("/v1/models").status_code == 401
        assert client.get("/v1/models", headers={"Authorization": "Bearer k2"}).status_code == 200
    monkeypatch.delenv("DSNB_GATEWAY_KEYS")
    assert main([*base, "--open-access"]) == 0
    with TestClient(seen.pop("app")) as client:
        assert client.get("/v1/models").status_code == 200

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
from filelock import Timeout

from dsnb.cache import atomic_directory, atomic_file, build_lock, cache_dir, write_json_atomic


def test_cache_dir_honours_env(tmp_path, monkeypatch):
    monkeypatch.setenv("DSNB_CACHE", str(tmp_path / "c"))
    assert cache_dir("models") == tmp_path / "c" / "models"
    assert (tmp_path / "c" / "models").is_dir()


def test_write_json_atomic_leaves_no_temp_files(tmp_path):
    path = write_json_atomic(tmp_path / "a" / "x.json", {"b": 1, "a": [1, 2]})
    assert json.loads(path.read_text()) == {"a": [1, 2], "b": 1}
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.json"]


def test_write_json_atomic_keeps_old_file_on_failure(tmp_path):
    path = write_json_atomic(tmp_path / "x.json", {"v": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"v": object()})  # not serialisable
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_atomic_directory_replaces_whole_or_nothing(tmp_path):
    final = tmp_path / "model"
    with atomic_directory(final) as tmp:
        (tmp / "weights").write_text("v1")
    assert (final / "weights").read_text() == "v1"
    with pytest.raises(RuntimeError), atomic_directory(final) as tmp:
        (tmp / "weights").write_text("half-written")
        raise RuntimeError("interrupted")
    assert (final / "weights").read_text() == "v1"
    with atomic_directory(final) as tmp:
        (tmp / "weights").write_text("v2")
    assert (final / "weights").read_text() == "v2"
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["model"]


@pytest.mark.parametrize("umask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o002, 0o664, 0o775),
                                                      (0o077, 0o600, 0o700)])
def test_atomic_writes_respect_the_umask(tmp_path, umask, file_mode, dir_mode):
    """A shared cache or output folder stays readable to the team: modes follow the umask like open/mkdir."""
    old = os.umask(umask)
    try:
        path = write_json_atomic(tmp_path / "x.json", {"v": 1})
        with atomic_file(tmp_path / "w.bin") as f:
            f.write(b"x")
        with atomic_directory(tmp_path / "model") as tmp:
            (tmp / "weights").write_text("v1")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == file_mode
    assert stat.S_IMODE((tmp_path / "w.bin").stat().st_mode) == file_mode
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == dir_mode


def test_build_lock_is_exclusive(tmp_path):
    lock = build_lock(tmp_path / "thing")
    with lock:
        other = build_lock(tmp_path / "thing")
        with pytest.raises(Timeout):
            other.acquire(timeout=0.1)


def test_install_torch_keeps_a_working_torch():
    script = Path(__file__).parent.parent / "scripts" / "install_torch.sh"
    import sys

    out = subprocess.run(["bash", str(script), sys.executable], capture_output=True, text=True, check=True).stdout
    assert "already installed" in out

"""Where the course keeps what it builds (tokenizer, base model, cleaned data) and how it writes it.

Everything goes under one cache directory, ``~/.cache/dsnb`` by default; set ``DSNB_CACHE`` to move it.
Files are written atomically (a temporary name, then ``os.replace``) so an interrupted run never
leaves a half-written file that a later run would trust; they get the permissions the umask gives
any new file (0644 / 0755 under the usual umask 022), so a cache or output folder shared by a team
stays readable. Taught in notebook 01.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from filelock import FileLock

ENV_VAR = "DSNB_CACHE"
#: Suffix of the temporary names ``atomic_file`` / ``atomic_directory`` write to (``.<name>.<random>.tmp``).
TMP_SUFFIX = ".tmp"


def cache_dir(*parts: str) -> Path:
    """Return (and create) the course cache directory, or a sub-directory of it.

    ``DSNB_CACHE`` overrides the default ``~/.cache/dsnb``.
    """
    root = Path(os.environ.get(ENV_VAR) or Path.home() / ".cache" / "dsnb").expanduser()
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def current_umask() -> int:
    """The process umask (read by setting it and putting it back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _chmod_like_new(path: str | Path, directory: bool = False) -> None:
    """Give ``path`` the mode ``open``/``mkdir`` would (``mkstemp``/``mkdtemp`` make 0600/0700)."""
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


def follow_umask(path: str | Path) -> None:
    """Give ``path`` (a file) or every ``*.safetensors`` under it (a directory) the mode the umask gives new files.

    safetensors' ``save_file`` (used by ``save_pretrained`` and the Trainer's checkpoints) creates its
    file with mode 0600 whatever the umask, so a model shared by a team would be readable by its
    writer only. dsnb calls this after every save it makes.
    """
    path = Path(path)
    for file in ([path] if path.is_file() else path.rglob("*.safetensors")):
        if file.is_file() and not file.is_symlink():
            _chmod_like_new(file)


@contextmanager
def atomic_file(path: str | Path, mode: str = "wb", **open_kwargs: Any) -> Iterator[IO[Any]]:
    """Yield a file opened on a temporary name next to ``path``; on success it becomes ``path``.

    The data is flushed to disk before the rename, so ``path`` holds either the old content or the
    complete new one; on an exception the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    try:
        _chmod_like_new(tmp)
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    with atomic_file(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
    return Path(path)


@contextmanager
def atomic_directory(final: str | Path) -> Iterator[Path]:
    """Yield a temporary directory next to ``final``; on success it replaces ``final`` as a whole.

    On an exception the temporary directory is removed and ``final`` is left as it was.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=TMP_SUFFIX))
    try:
        _chmod_like_new(tmp, directory=True)
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def build_lock(path: str | Path) -> FileLock:
    """A cross-process lock so that two processes (e.g. parallel tests) never build the same artifact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path.with_name(f".{path.name}.lock")))

"""Checkpoints you can trust: a SHA-256 manifest, optional Zstandard compression, verified resume.

The Trainer already saves everything a resume needs into ``checkpoint-N/``: the weights
(safetensors), the optimizer and scheduler states, the RNG states of every generator and the
trainer state (step, epoch, so the data order continues where it stopped). What it does not do is
tell a complete checkpoint from one that a killed process left half-written, or from one whose
bytes rotted on disk. ``ManifestCallback`` adds that: after the Trainer has written a checkpoint it
hashes every file (optionally compressing each with Zstandard first, claim C31) and writes
``manifest.json`` last, atomically. A checkpoint counts as complete only when its manifest exists,
and it is loaded only when every file matches its hash.

- ``find_resumable(output_dir)`` returns the newest complete checkpoint (skipping, with a warning,
  incomplete ones a crash left behind); ``verify_checkpoint`` raises ``CheckpointError`` naming the
  file that is missing, truncated or corrupted, so a bad checkpoint is never loaded.
- ``prepare_resume`` verifies and (if compressed) decompresses a checkpoint into a directory the
  Trainer's ``resume_from_checkpoint`` reads.

Taught in notebook 03 (and its resource rules in notebook 11).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from dsnb.cache import atomic_directory, atomic_file, write_json_atomic

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
ZSTD_SUFFIX = ".zst"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint is incomplete, truncated or corrupted; the message names the file and what to do."""


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """The SHA-256 hex digest of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _zstd():
    import zstandard

    return zstandard


def _compress_file(path: Path, level: int) -> Path:
    """Compress ``path`` to ``path.zst`` atomically and remove the original."""
    target = path.with_name(path.name + ZSTD_SUFFIX)
    with atomic_file(target) as out, open(path, "rb") as src:
        _zstd().ZstdCompressor(level=level).copy_stream(src, out)
    path.unlink()
    return target


def write_manifest(checkpoint: str | Path, compress: bool = False, level: int = 3) -> dict[str, Any]:
    """Hash (and optionally Zstandard-compress) every file of ``checkpoint``; write ``manifest.json`` last.

    Returns the manifest. The manifest records, per file, the SHA-256 and size of the original bytes
    and of the stored (possibly compressed) bytes, so both the file on disk and the restored file are
    checked.
    """
    checkpoint = Path(checkpoint)
    for stale in checkpoint.rglob(f"*{ZSTD_SUFFIX}"):
        if stale.with_name(stale.name[: -len(ZSTD_SUFFIX)]).is_file():
            stale.unlink()  # a newer save into the same directory replaced this file
    files: dict[str, dict[str, Any]] = {}
    for path in sorted(p for p in checkpoint.rglob("*") if p.is_file() and p.name != MANIFEST):
        if compress and path.name.endswith(ZSTD_SUFFIX):
            continue
        rel = path.relative_to(checkpoint).as_posix()
        entry = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
        stored = _compress_file(path, level) if compress else path
        entry.update(stored_as=stored.relative_to(checkpoint).as_posix(), stored_sha256=sha256_file(stored),
                     stored_bytes=stored.stat().st_size)
        files[rel] = entry
    manifest = {
        "format": MANIFEST_FORMAT,
        "compression": "zstd" if compress else None,
        "files": files,
        "bytes": sum(e["bytes"] for e in files.values()),
        "stored_bytes": sum(e["stored_bytes"] for e in files.values()),
    }
    write_json_atomic(checkpoint / MANIFEST, manifest)
    return manifest


def read_manifest(checkpoint: str | Path) -> dict[str, Any]:
    """The manifest of ``checkpoint``; ``CheckpointError`` if it has none (it was never completed)."""
    path = Path(checkpoint) / MANIFEST
    if not path.is_file():
        raise CheckpointError(
            f"{checkpoint} has no {MANIFEST}: it was never completed (the run was probably killed while "
            "writing it). Resume from an earlier checkpoint, or delete this directory."
        )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}); the checkpoint cannot be trusted.") from exc
    if manifest.get("format") != MANIFEST_FORMAT:
        raise CheckpointError(f"{path} has manifest format {manifest.get('format')!r}; expected {MANIFEST_FORMAT}.")
    return manifest


def verify_checkpoint(checkpoint: str | Path) -> dict[str, Any]:
    """Check every stored file of ``checkpoint`` against its manifest; return the manifest.

    Raises ``CheckpointError`` naming the first file that is missing, truncated (size differs) or
    corrupted (hash differs). Taught in notebook 03.
    """
    checkpoint = Path(checkpoint)
    manifest = read_manifest(checkpoint)
    for rel, entry in manifest["files"].items():
        stored = checkpoint / entry["stored_as"]
        what = f"{stored} (file {rel} of checkpoint {checkpoint})"
        if not stored.is_file():
            raise CheckpointError(f"{what} is missing. The checkpoint is incomplete; resume from another one.")
        size = stored.stat().st_size
        if size != entry["stored_bytes"]:
            raise CheckpointError(
                f"{what} is truncated or altered: {size} bytes on disk, {entry['stored_bytes']} when it was "
                "written. Do not load it; resume from an earlier checkpoint."
            )
        if sha256_file(stored) != entry["stored_sha256"]:
            raise CheckpointError(
                f"{what} is corrupted: its SHA-256 differs from the manifest. Do not load it; resume from "
                "an earlier checkpoint."
            )
    return manifest


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """``checkpoint-N`` directories under ``output_dir``, oldest first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if p.is_dir() and (m := _CHECKPOINT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def find_resumable(output_dir: str | Path) -> Path | None:
    """The newest *complete* checkpoint under ``output_dir`` (None if there is none).

    Checkpoints without a manifest (a crash while writing) are skipped with a warning. The one chosen
    is verified; if it is corrupted, ``CheckpointError`` is raised rather than silently falling back.
    """
    for path in reversed(list_checkpoints(output_dir)):
        if not (path / MANIFEST).is_file():
            logger.warning("skipping %s: no manifest (incomplete, probably interrupted while saving)", path)
            continue
        verify_checkpoint(path)
        return path
    return None


def prepare_resume(checkpoint: str | Path) -> Path:
    """Verify ``checkpoint`` and return a directory the Trainer can resume from.

    An uncompressed checkpoint is returned as is; a compressed one is decompressed (each file checked
    against its original SHA-256) into ``<output_dir>/.restored/checkpoint-N``, written atomically
    (outside the Trainer's ``checkpoint-*`` namespace, so checkpoint rotation never sees it).
    """
    checkpoint = Path(checkpoint)
    manifest = verify_checkpoint(checkpoint)
    if manifest["compression"] is None:
        return checkpoint
    final = checkpoint.parent / ".restored" / checkpoint.name
    with atomic_directory(final) as tmp:
        for rel, entry in manifest["files"].items():
            out = tmp / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            with open(checkpoint / entry["stored_as"], "rb") as src, open(out, "wb") as dst:
                _zstd().ZstdDecompressor().copy_stream(src, dst)
            if sha256_file(out) != entry["sha256"]:
                raise CheckpointError(f"{rel} of {checkpoint} decompressed to bytes that do not match the manifest.")
    return final


class ManifestCallback(TrainerCallback):
    """After each Trainer save: hash (optionally compress) the checkpoint and write its manifest last."""

    def __init__(self, compress: bool = False, level: int = 3):
        self.compress = compress
        self.level = level
        self.last: dict[str, Any] | None = None

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if path.is_dir():
            self.last = write_manifest(path, compress=self.compress, level=self.level)
            logger.info("checkpoint %s: %d files, %d bytes stored (%d raw)", path, len(self.last["files"]),
                        self.last["stored_bytes"], self.last["bytes"])


def remove_restored(output_dir: str | Path) -> None:
    """Delete the decompressed copies ``prepare_resume`` made under ``output_dir``."""
    shutil.rmtree(Path(output_dir) / ".restored", ignore_errors=True)

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
  Trainer's ``resume_from_checkpoint`` reads; ``prepare_resume_on_main`` does it once (rank 0) when
  several processes train, and ``remove_restored`` deletes the restored copy afterwards.
- ``restore_full_weights`` loads a full checkpoint's weights the way ``from_pretrained`` does (the
  Trainer's own loading misses fused MoE experts); ``load_best_weights`` reloads the best checkpoint
  through the same verified path. ``dsnb.train.run.run_stage`` uses both for every stage.
- A checkpoint never makes us write or read outside itself: a manifest entry that is absolute,
  contains ``..``, or resolves (through symbolic links) outside the checkpoint is refused, a
  malformed manifest is a ``CheckpointError``, files are decompressed into a temporary directory in
  the run's own output directory and moved into place only once every hash matched, and files the
  manifest does not list are reported.

Taught in notebook 03 (and its resource rules in notebook 11).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from torch import nn
from transformers import TrainerCallback

from dsnb.cache import TMP_SUFFIX, atomic_directory, atomic_file, follow_umask, write_json_atomic

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
ZSTD_SUFFIX = ".zst"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
RESTORED = ".restored"


class CheckpointError(RuntimeError):
    """A checkpoint is incomplete, truncated or corrupted; the message names the file and what to do."""


def sha256_file(path: str | Path) -> str:
    """The SHA-256 hex digest of a file (``hashlib.file_digest`` reads it in chunks)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


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
    follow_umask(checkpoint)  # the Trainer's safetensors are written 0600
    links = [p.relative_to(checkpoint).as_posix() for p in checkpoint.rglob("*") if p.is_symlink()]
    if links:
        raise CheckpointError(f"{checkpoint} contains symbolic links {links}; a checkpoint holds its own files only.")
    for stale in checkpoint.rglob(f".*{TMP_SUFFIX}"):
        if stale.is_file():
            stale.unlink()  # left by a compression that was interrupted: never hash or list it
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
    if not Path(checkpoint).is_dir():
        raise CheckpointError(f"{checkpoint} is not a checkpoint directory (it does not exist or is a file): "
                              "pass a checkpoint-N directory of the run, or --resume auto for the newest one.")
    path = Path(checkpoint) / MANIFEST
    if not path.is_file():
        raise CheckpointError(
            f"{checkpoint} has no {MANIFEST}: it was never completed (the run was probably killed while "
            "writing it). Resume from an earlier checkpoint, or delete this directory."
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}); the checkpoint cannot be trusted.") from exc
    _validate_manifest(Path(checkpoint), manifest, path)
    return manifest


def _bad(path: Path, what: str) -> CheckpointError:
    return CheckpointError(f"{path} is malformed: {what}. The checkpoint cannot be trusted; resume from another one.")


def _validate_manifest(checkpoint: Path, manifest: Any, path: Path) -> None:
    """Raise ``CheckpointError`` unless ``manifest`` has the structure ``write_manifest`` writes."""
    if not isinstance(manifest, dict):
        raise _bad(path, f"expected a JSON object, found {type(manifest).__name__}")
    if manifest.get("format") != MANIFEST_FORMAT:
        raise CheckpointError(f"{path} has manifest format {manifest.get('format')!r}; expected {MANIFEST_FORMAT}.")
    if manifest.get("compression") not in (None, "zstd"):
        raise _bad(path, f"unknown compression {manifest.get('compression')!r} (expected null or 'zstd')")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise _bad(path, "'files' is missing or not an object of {file: entry}")
    suffix = ZSTD_SUFFIX if manifest["compression"] else ""
    for rel, entry in files.items():
        safe_member(checkpoint, rel, f"file {rel!r} in {path}")
        if not isinstance(entry, dict):
            raise _bad(path, f"the entry of {rel!r} is not an object")
        for key in ("sha256", "stored_sha256"):
            if not isinstance(entry.get(key), str) or not _SHA256_RE.match(entry[key]):
                raise _bad(path, f"the entry of {rel!r} has no valid {key!r} (64 hex digits)")
        for key in ("bytes", "stored_bytes"):
            value = entry.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise _bad(path, f"the entry of {rel!r} has no valid {key!r} (a byte count)")
        safe_member(checkpoint, entry.get("stored_as"), f"stored_as of {rel!r} in {path}")
        if entry["stored_as"] != rel + suffix:
            raise _bad(path, f"{rel!r} is stored as {entry['stored_as']!r}; expected {rel + suffix!r}")


def safe_member(root: str | Path, rel: Any, what: str = "path") -> Path:
    """``root / rel`` if ``rel`` is a relative path that stays inside ``root``; ``CheckpointError`` otherwise.

    Refused: anything but a non-empty string, absolute paths (POSIX or Windows), ``..`` or ``.``
    components, backslashes, and paths that leave ``root`` once symbolic links are followed.
    """
    if not isinstance(rel, str) or not rel or "\x00" in rel:
        raise CheckpointError(f"{what}: {rel!r} is not a file name; the manifest is malformed.")
    parts = rel.split("/")
    if (PurePosixPath(rel).is_absolute() or PureWindowsPath(rel).is_absolute() or PureWindowsPath(rel).drive
            or "\\" in rel or any(part in ("", ".", "..") for part in parts)):
        raise CheckpointError(f"{what}: {rel!r} is absolute or climbs out with '..'; refusing to touch it. "
                              "A checkpoint's manifest names files inside the checkpoint only.")
    root = Path(root)
    path = root / rel
    if not path.resolve().is_relative_to(root.resolve()):
        raise CheckpointError(f"{what}: {rel!r} resolves to {path.resolve()}, outside {root} (a symbolic link?); "
                              "refusing to read or write it.")
    return path


def unlisted_files(checkpoint: str | Path, manifest: dict[str, Any]) -> list[str]:
    """Files under ``checkpoint`` that its manifest does not list (the manifest itself excluded)."""
    checkpoint = Path(checkpoint)
    listed = {e["stored_as"] for e in manifest["files"].values()} | {MANIFEST}
    return sorted(rel for p in checkpoint.rglob("*") if (p.is_file() or p.is_symlink())
                  and (rel := p.relative_to(checkpoint).as_posix()) not in listed)


def verify_checkpoint(checkpoint: str | Path) -> dict[str, Any]:
    """Check every stored file of ``checkpoint`` against its manifest; return the manifest.

    Raises ``CheckpointError`` naming the first file that is missing, truncated (size differs) or
    corrupted (hash differs), or a manifest entry that points outside the checkpoint. Files the
    manifest does not list are reported with a warning (they are never loaded from a compressed
    checkpoint). Taught in notebook 03.
    """
    checkpoint = Path(checkpoint)
    manifest = read_manifest(checkpoint)
    for rel, entry in manifest["files"].items():
        stored = safe_member(checkpoint, entry["stored_as"], f"stored_as of {rel!r}")
        what = f"{stored} (file {rel} of checkpoint {checkpoint})"
        if stored.is_symlink() or not stored.is_file():
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
    extra = unlisted_files(checkpoint, manifest)
    if extra:
        logger.warning("%s holds %d file(s) its manifest does not list (not verified%s): %s", checkpoint, len(extra),
                       ", not restored" if manifest["compression"] else "", ", ".join(extra))
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


def restored_path(checkpoint: str | Path, output_dir: str | Path | None = None) -> Path:
    """Where ``prepare_resume`` puts the decompressed copy of ``checkpoint``: ``<output_dir>/.restored/<name>``."""
    checkpoint = Path(checkpoint)
    return Path(output_dir if output_dir is not None else checkpoint.parent) / RESTORED / checkpoint.name


def _decompress(src: Path, dst: Path, limit: int, what: str) -> None:
    """Decompress ``src`` into ``dst``, refusing more than ``limit`` bytes (a bomb or a lying manifest)."""
    written = 0
    with open(src, "rb") as fin, open(dst, "wb") as fout, _zstd().ZstdDecompressor().stream_reader(fin) as reader:
        while block := reader.read(1 << 20):
            written += len(block)
            if written > limit:
                raise CheckpointError(f"{what} decompresses to more than the {limit} bytes its manifest records.")
            fout.write(block)


def prepare_resume(checkpoint: str | Path, output_dir: str | Path | None = None) -> Path:
    """Verify ``checkpoint`` and return a directory the Trainer can resume from.

    An uncompressed checkpoint is returned as is; a compressed one is decompressed into a temporary
    directory inside ``<output_dir>/.restored/`` (``output_dir`` is the run's own output directory,
    by default the checkpoint's parent), every file is checked against its original SHA-256, and only
    then is the directory moved into place as ``<output_dir>/.restored/checkpoint-N`` (outside the
    Trainer's ``checkpoint-*`` namespace, so checkpoint rotation never sees it). On any mismatch
    nothing is left behind. Delete it with ``remove_restored`` once the Trainer has read it.
    """
    checkpoint = Path(checkpoint)
    manifest = verify_checkpoint(checkpoint)
    if manifest["compression"] is None:
        return checkpoint
    final = restored_path(checkpoint, output_dir)
    with atomic_directory(final) as tmp:
        for rel, entry in manifest["files"].items():
            out = safe_member(tmp, rel, f"file {rel!r} of {checkpoint}")
            out.parent.mkdir(parents=True, exist_ok=True)
            _decompress(checkpoint / entry["stored_as"], out, entry["bytes"], f"{rel} of {checkpoint}")
            if sha256_file(out) != entry["sha256"]:
                raise CheckpointError(f"{rel} of {checkpoint} decompressed to bytes that do not match the manifest.")
    return final


def prepare_resume_on_main(resume_from: str | Path, output_dir: str | Path) -> tuple[Path, Path] | None:
    """``prepare_resume`` done once when several processes train: rank 0 works, the others wait for its answer.

    ``resume_from`` is a checkpoint directory or ``"auto"`` (the newest complete checkpoint in
    ``output_dir``). Returns ``(checkpoint, directory to read)`` on every process, or None when
    ``"auto"`` found no complete checkpoint.
    """
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    state = PartialState()
    found: list[tuple[str, str] | None] = [None]
    if state.is_main_process:
        ck = find_resumable(output_dir) if str(resume_from) == "auto" else Path(resume_from)
        found[0] = (str(ck), str(prepare_resume(ck, output_dir))) if ck is not None else None
    if state.num_processes > 1:
        broadcast_object_list(found, from_process=0)  # also the barrier: nobody reads before rank 0 is done
    return (Path(found[0][0]), Path(found[0][1])) if found[0] is not None else None


class ManifestCallback(TrainerCallback):
    """After each Trainer save: hash (optionally compress) the checkpoint and write its manifest last."""

    def __init__(self, compress: bool = False, level: int = 3):
        self.compress = compress
        self.level = level
        self.last: dict[str, Any] | None = None

    def on_save(self, args, state, control, **kwargs):
        from accelerate import PartialState

        ranks = PartialState()
        # Every rank writes its own rng_state_{rank}.pth after the Trainer's last barrier: wait for all of
        # them before rank 0 hashes (and compresses, and deletes) the checkpoint's files.
        ranks.wait_for_everyone()
        if state.is_world_process_zero:
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if path.is_dir():
                self.last = write_manifest(path, compress=self.compress, level=self.level)
                logger.info("checkpoint %s: %d files, %d bytes stored (%d raw)", path, len(self.last["files"]),
                            self.last["stored_bytes"], self.last["bytes"])
        ranks.wait_for_everyone()  # once on_save returns on any rank, the checkpoint is complete


def remove_restored(output_dir: str | Path) -> None:
    """Delete the decompressed copies ``prepare_resume`` made under ``output_dir`` (after the Trainer read them)."""
    shutil.rmtree(Path(output_dir) / RESTORED, ignore_errors=True)


def remove_restored_on_main(output_dir: str | Path) -> None:
    """``remove_restored`` once every process is past reading the restored copy (rank 0 deletes it)."""
    from accelerate import PartialState

    state = PartialState()
    state.wait_for_everyone()
    if state.is_main_process:
        remove_restored(output_dir)


def restore_full_weights(model: nn.Module, checkpoint: str | Path) -> bool:
    """Load a checkpoint's weights into ``model`` through ``from_pretrained`` (weight conversions applied).

    Needed for MoE models in transformers 5: a checkpoint stores routed experts per expert
    (``experts.0.gate_proj.weight`` ...) while the model holds them fused (``experts.gate_up_proj``), and
    the Trainer's own resume loads the file with ``strict=False``, so the experts would silently keep
    their pre-resume values. Returns True if weights were loaded (full models; adapters load as usual).
    """
    from transformers import AutoModelForCausalLM

    checkpoint = Path(checkpoint)
    if hasattr(model, "peft_config") or not (checkpoint / "config.json").is_file():
        return False
    loaded = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=next(model.parameters()).dtype)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if missing or unexpected:
        raise RuntimeError(f"checkpoint {checkpoint} does not fit the model: missing {missing}, unexpected {unexpected}")
    return True


def load_best_weights(model: nn.Module, best: str | Path, output_dir: str | Path) -> None:
    """Reload the best checkpoint into ``model`` through the resume path (verified, decompressed, converted).

    The Trainer's own ``load_best_model_at_end`` loads with ``strict=False`` (a fused-expert model would
    keep its last-step routed experts) and does not find compressed weights at all; this replaces it.
    """
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    found = prepare_resume_on_main(best, output_dir)
    assert found is not None
    restored = found[1]
    if not restore_full_weights(model, restored):
        result = set_peft_model_state_dict(model, load_file(restored / "adapter_model.safetensors"))
        if result.unexpected_keys:
            raise RuntimeError(f"best checkpoint {best} does not fit the adapters: {result.unexpected_keys}")
    logger.info("reloaded the best checkpoint %s", best)

"""Which build of the base model a figure belongs to: weight fingerprints, and stored results labelled with them.

The course's base model is rebuilt on every learner's machine from the same recipe, and another CPU
builds a slightly different model (float sums differ between instruction sets and thread counts; an
earlier rebuild's held-out loss was 4.157 against 4.151). So a result measured once and stored under
``benchmarks/results`` (a sweep too slow to run in a notebook) belongs to one build:

- ``weights_fingerprint(directory)`` hashes a model's saved tensors (names, dtypes, shapes and bytes):
  two builds with the same fingerprint are the same model, bit for bit.
- ``build_stamp()`` is what a benchmark stores with its result: the base model's fingerprint, its
  build seed and corpus, and its held-out loss.
- ``load_stored(path)`` reads a stored result and says whether this machine's base model is the build
  it was measured on; its ``label`` is the sentence a notebook prints above the stored figures, so the
  learner always knows whether they read their own build's figure or the reference build's.

A notebook never fails because the live build differs: where it compares a stored figure with a live
one, it compares what carries over between builds (a ratio to the same model's baseline) unless the
fingerprints match. Taught in notebook 01 (the build) and used by notebooks 04, 05, 06 and 09.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from dsnb.model.pretrain import BUILD_INFO, REPORT, base_model_path, cached_base_model_path

#: Key under which a stored result keeps the stamp of the build it was measured on.
STAMP_KEY = "base_model"
#: Hex digits of a fingerprint that are shown and stored (48 bits: no two builds will collide).
FINGERPRINT_CHARS = 12


def weights_fingerprint(directory: str | Path) -> str:
    """A short SHA-256 over every tensor in ``directory``'s ``*.safetensors`` files (name, dtype, shape, bytes).

    File metadata and tensor order inside the files do not count: only what the model computes with.
    """
    files = sorted(Path(directory).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{directory} has no *.safetensors files: pass a directory written by save_pretrained")
    digest = hashlib.sha256()
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for name in sorted(f.keys()):
                t = f.get_tensor(name).contiguous()
                digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
                digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())  # raw bits, any dtype
    return digest.hexdigest()[:FINGERPRINT_CHARS]


def build_stamp(directory: str | Path | None = None) -> dict[str, Any]:
    """What a stored result keeps of the base model it was measured on (``directory``: the cached base model).

    Fingerprint, build seed, corpus fingerprint and held-out loss; the base model must exist.
    """
    directory = Path(directory) if directory is not None else base_model_path()
    info = json.loads((directory / BUILD_INFO).read_text())
    report = json.loads((directory / REPORT).read_text())
    return {
        "fingerprint": weights_fingerprint(directory),
        "seed": info["pretrain_config"].get("seed"),
        "corpus_fingerprint": info["corpus_fingerprint"],
        "heldout_loss": round(report["test_loss_after"], 4),
    }


@dataclass
class StoredResult:
    """A result from ``benchmarks/results`` with the build it was measured on and the build this machine has."""

    path: Path
    data: dict[str, Any]
    stamp: dict[str, Any] | None
    live: str | None

    @property
    def fingerprint(self) -> str | None:
        """The fingerprint of the base model the result was measured on (``None``: not recorded)."""
        return (self.stamp or {}).get("fingerprint")

    @property
    def same_build(self) -> bool:
        """True when this machine's base model is bit for bit the one the result was measured on."""
        return self.fingerprint is not None and self.fingerprint == self.live

    @property
    def label(self) -> str:
        """One sentence for the page: whose figures these are."""
        name = self.path.name
        if self.same_build:
            return f"{name}: measured on this machine's build of the base model (fingerprint {self.live})."
        where = (f"the reference build (fingerprint {self.fingerprint}, held-out loss "
                 f"{self.stamp['heldout_loss']:.3f})" if self.fingerprint else "a build whose fingerprint was not recorded")
        mine = (f"this machine's build is {self.live}" if self.live
                else "this machine has not built the course base model")
        return (f"{name}: measured on {where}; {mine}. Its figures are the reference build's, not yours: "
                f"compare differences and ratios with the live cells, not digits.")


def load_stored(path: str | Path, live: str | None | bool = True) -> StoredResult:
    """Read a stored result; ``live``: this machine's fingerprint (``True``: the cached base model's, if built).

    Raises ``FileNotFoundError`` naming the benchmark that writes the file when it is missing.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: it is written by benchmarks/{path.stem}.py "
                                f"(run it with .venv/bin/python from the repository root)")
    data = json.loads(path.read_text())
    if live is True:
        directory = cached_base_model_path()
        live = weights_fingerprint(directory) if directory is not None else None
    return StoredResult(path, data, data.get(STAMP_KEY), live or None)

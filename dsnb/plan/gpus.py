"""The GPU catalogue: the cards the article and the course discuss, and custom ones by memory size.

``GPUS`` holds the RTX 4090 24 GB, A100 40/80 GB and H100 80 GB with the memory ``nvidia-smi`` reports;
``gpu_spec`` turns a catalogue name, a ``GPUSpec`` or a size in GiB into a ``GPUSpec``. Taught in notebook 00.
"""

from __future__ import annotations

from dataclasses import dataclass

from dsnb.plan.memory import GiB

MiB = 2**20


@dataclass(frozen=True)
class GPUSpec:
    """A GPU model: name, memory in bytes, bf16 support."""

    name: str
    memory_bytes: int
    bf16: bool = True

    @property
    def memory_gib(self) -> float:
        return self.memory_bytes / GiB


#: Memory as ``nvidia-smi`` reports it (MiB), for the cards the article and the course discuss.
GPUS: dict[str, GPUSpec] = {
    "RTX 4090": GPUSpec("RTX 4090", 24564 * MiB),
    "A100 40GB": GPUSpec("A100 40GB", 40960 * MiB),
    "A100 80GB": GPUSpec("A100 80GB", 81920 * MiB),
    "H100 80GB": GPUSpec("H100 80GB", 81559 * MiB),
}


def gpu_spec(gpu: str | GPUSpec | float) -> GPUSpec:
    """A ``GPUSpec`` from a catalogue name (``"A100 80GB"``), a spec, or a memory size in GiB (custom)."""
    if isinstance(gpu, GPUSpec):
        return gpu
    if isinstance(gpu, int | float):
        if not 0 < gpu < float("inf"):
            raise ValueError(f"GPU memory must be a positive number of GiB, and finite, not {gpu!r} (e.g. 80)")
        return GPUSpec(f"custom {gpu:g} GiB", int(gpu * GiB))
    if gpu not in GPUS:
        raise ValueError(f"unknown GPU {gpu!r}; choose from {sorted(GPUS)} or pass its memory in GiB")
    return GPUS[gpu]

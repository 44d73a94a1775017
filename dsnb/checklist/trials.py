"""The trials behind the checklist, each a measurement: a short run, a thread-count timing, a checkpoint round trip.

- ``short_run``: the first ``steps`` optimizer steps of the real run (the recipe's own schedule, on a
  copy of the model), logging the gradient norm every step (the Trainer's, before clipping). On a CUDA
  GPU it also samples GPU utilisation through NVML (``nvidia-ml-py``) from the second step on, and runs
  under ``torch.cuda.set_per_process_memory_fraction(0.8)`` so that a run needing more than 80% of the
  card fails here instead of at step 3 000 (claim C31); the fraction is set back to 1.0 afterwards. At
  the last step it saves a Trainer checkpoint (weights, optimizer, scheduler, RNG states).
- ``time_threads``: seconds per forward + backward step with torch's default thread count and with the
  article's fixed ``torch.set_num_threads(4)``; the default is restored.
- ``checkpoint_round_trip``: two copies of that checkpoint, one hashed (``dsnb.train.checkpoint``'s
  manifest) and one Zstandard-compressed and hashed; then one verified and one decompressed and
  verified. The size ratio and the extra seconds each way.

Taught in notebook 11.
"""

from __future__ import annotations

import logging
import os
import shutil
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

from dsnb.model.device import model_device
from dsnb.train.checkpoint import prepare_resume, verify_checkpoint, write_manifest
from dsnb.train.logs import logged

logger = logging.getLogger(__name__)


class StopAfter(TrainerCallback):
    """Stop (and save a checkpoint) after ``steps`` optimizer steps, whatever ``max_steps`` the schedule has."""

    def __init__(self, steps: int):
        self.steps = steps

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.steps:
            control.should_training_stop = True
            control.should_save = True


class NvmlSampler(TrainerCallback):
    """GPU utilisation (0–1) of the training GPU, sampled every ``interval`` seconds from step ``start``."""

    def __init__(self, device_index: int, interval: float = 0.05, start: int = 1):
        import pynvml

        self._nvml = pynvml
        pynvml.nvmlInit()
        try:  # NVML numbers GPUs physically; CUDA_VISIBLE_DEVICES may renumber them, the PCI bus id does not
            props = torch.cuda.get_device_properties(device_index)
            bus = f"{props.pci_domain_id:08x}:{props.pci_bus_id:02x}:{props.pci_device_id:02x}.0"
            self.handle = pynvml.nvmlDeviceGetHandleByPciBusId(bus)
        except Exception:  # noqa: BLE001 - older drivers or torch builds: fall back to the index
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
        self.interval, self.start = interval, start
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.samples.append(self._nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu / 100)

    def on_step_begin(self, args, state, control, **kwargs):
        if self._thread is None and state.global_step >= self.start:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()

    def on_train_end(self, args, state, control, **kwargs):
        self.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self._nvml.nvmlShutdown()
        except Exception:  # noqa: BLE001 - already shut down
            pass


@dataclass
class ShortRun:
    """What the short run measured (``None`` where a measurement does not apply, with the reason)."""

    grad_norms: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    utilisation: list[float] | None = None
    utilisation_reason: str = "no CUDA GPU: utilisation is a GPU measure (on a CPU watch the step time instead)"
    peak_bytes: int | None = None
    total_bytes: int | None = None
    memory_reason: str = "no CUDA GPU: set_per_process_memory_fraction limits CUDA memory only"
    oom: bool = False
    checkpoint: Path | None = None
    error: str | None = None


def _nvml_sampler(device: torch.device) -> tuple[NvmlSampler | None, str]:
    if device.type != "cuda":
        return None, ShortRun.utilisation_reason
    try:
        return NvmlSampler(device.index if device.index is not None else torch.cuda.current_device()), ""
    except ImportError:
        return None, "nvidia-ml-py is not installed (pip install nvidia-ml-py)"
    except Exception as exc:  # noqa: BLE001 - NVML errors: no driver library, no permission
        return None, f"NVML unavailable: {exc}"


def short_run(trainer: Trainer, steps: int, reserve: float = 0.2) -> ShortRun:
    """Train ``trainer`` for ``steps`` steps (it must log every step), measuring what the checklist needs."""
    out = ShortRun()
    trainer.add_callback(StopAfter(steps))
    device = trainer.args.device
    sampler, reason = _nvml_sampler(device)
    if sampler is not None:
        trainer.add_callback(sampler)
    else:
        out.utilisation_reason = reason
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.set_per_process_memory_fraction(1 - reserve, device)
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    try:
        trainer.train()
    except torch.OutOfMemoryError:
        out.oom = True
        out.error = f"out of memory within {1 - reserve:.0%} of the GPU"
    except Exception as exc:  # noqa: BLE001 - a checklist reports a failing run, it does not crash with it
        logger.debug("short run failed", exc_info=True)
        out.error = f"{type(exc).__name__}: {exc}"
    finally:
        out.seconds = time.perf_counter() - t0
        if sampler is not None:
            sampler.close()
            out.utilisation = sampler.samples
        if cuda:
            out.peak_bytes = torch.cuda.max_memory_reserved(device)
            out.total_bytes = torch.cuda.get_device_properties(device).total_memory
            torch.cuda.set_per_process_memory_fraction(1.0, device)
    history = trainer.state.log_history
    out.grad_norms = logged(history, "grad_norm")[1]
    out.losses = logged(history, "loss")[1]
    out.steps = trainer.state.global_step
    ck = Path(trainer.args.output_dir) / f"checkpoint-{trainer.state.global_step}"
    out.checkpoint = ck if ck.is_dir() else None
    return out


def time_threads(model: torch.nn.Module, batch: dict[str, torch.Tensor], threads: int = 4,
                 repeats: int = 3) -> dict[str, float]:
    """Median seconds of one forward + backward step at torch's default thread count and at ``threads``.

    The two settings alternate step by step (``repeats`` each, after one warm-up step each), so a change in
    the machine's load affects both alike.
    """
    default = torch.get_num_threads()
    device = model_device(model)
    batch = {k: v.to(device) for k, v in batch.items()}
    was_training = model.training
    model.train()

    def step() -> float:
        t0 = time.perf_counter()
        model(**batch).loss.backward()
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0

    result: dict[str, float] = {"cores": float(len(os.sched_getaffinity(0))), "default_threads": float(default),
                                "load": os.getloadavg()[0]}  # runnable processes (1-minute average)
    times: dict[int, list[float]] = {default: [], threads: []}
    try:
        for n in times:  # the first step at a thread count pays for the thread pool and kernel choice
            torch.set_num_threads(n)
            step()
        for _ in range(repeats):  # alternate, so that a change in the machine's load hits both settings alike
            for n in times:
                torch.set_num_threads(n)
                times[n].append(step())
        result.update(default_s=statistics.median(times[default]), article_s=statistics.median(times[threads]))
    finally:
        torch.set_num_threads(default)
        model.train(was_training)
    return result


def checkpoint_round_trip(checkpoint: str | Path, level: int = 3) -> dict[str, Any]:
    """Size ratio and extra save / load seconds of a Zstandard-compressed copy of ``checkpoint``."""
    checkpoint = Path(checkpoint)
    with tempfile.TemporaryDirectory(dir=checkpoint.parent) as tmp:
        plain, packed = Path(tmp) / "plain" / checkpoint.name, Path(tmp) / "zstd" / checkpoint.name
        shutil.copytree(checkpoint, plain)
        shutil.copytree(checkpoint, packed)
        t0 = time.perf_counter()
        write_manifest(plain, compress=False)
        t1 = time.perf_counter()
        manifest = write_manifest(packed, compress=True, level=level)
        t2 = time.perf_counter()
        verify_checkpoint(plain)
        t3 = time.perf_counter()
        restored = prepare_resume(packed)  # verify the stored bytes, decompress, check the original hashes
        t4 = time.perf_counter()
        same = all((restored / rel).read_bytes() == (plain / rel).read_bytes() for rel in manifest["files"])
    return {"bytes": manifest["bytes"], "stored_bytes": manifest["stored_bytes"],
            "ratio": manifest["stored_bytes"] / manifest["bytes"], "save_plain_s": t1 - t0, "save_zstd_s": t2 - t1,
            "save_extra_s": (t2 - t1) - (t1 - t0), "load_plain_s": t3 - t2, "load_zstd_s": t4 - t3,
            "load_extra_s": (t4 - t3) - (t3 - t2), "verified": same}

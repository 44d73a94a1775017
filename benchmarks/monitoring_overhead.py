"""Step time of training with ``TrainingMonitor`` at default settings vs without it (target ratio <= 1.10).

Same model (the course's tiny DeepSeek-V3 architecture, random weights), same data, batch, optimizer and
steps; runs alternate (without, with, without, with, ...) so that load from other processes on the
machine hits both alike. The step time is the median over the steps of a run (the first 3 steps are
warm-up and left out), then the median over repeats. The monitored run writes real event files
(logging every step). Printed: both step times, their ratio, and the time spent inside the
monitor's own callbacks and hooks per step (robust to load from other processes).
Run: python benchmarks/monitoring_overhead.py [--steps 15] [--repeats 1] [--batch 4] [--seq 64]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from transformers import DeepseekV3ForCausalLM, PrinterCallback, Trainer, TrainerCallback, TrainingArguments

from dsnb.model.pretrain import tiny_deepseek_config
from dsnb.train.monitor import TrainingMonitor


class TimedMonitor(TrainingMonitor):
    """``TrainingMonitor`` that adds up the wall time spent in its own callbacks and hooks.

    On a machine shared with other jobs the end-to-end ratio swings by tens of percent between
    identical runs; the monitor's own seconds per step do not depend on what else is running nearly as much.
    """

    def __init__(self, *args, **kwargs):
        self.spent = 0.0
        super().__init__(*args, **kwargs)

    def _timed(self, f):
        def g(*a, **k):
            t = time.perf_counter()
            try:
                return f(*a, **k)
            finally:
                self.spent += time.perf_counter() - t

        return g

    def _see_inputs(self, *a):
        return self._timed(super()._see_inputs)(*a)

    def _count(self, i):
        return self._timed(super()._count(i))

    def _act_hook(self, layer):
        return self._timed(super()._act_hook(layer))

    def on_step_begin(self, *a, **k):
        return self._timed(super().on_step_begin)(*a, **k)

    def on_pre_optimizer_step(self, *a, **k):
        return self._timed(super().on_pre_optimizer_step)(*a, **k)

    def on_step_end(self, *a, **k):
        return self._timed(super().on_step_end)(*a, **k)

    def on_log(self, *a, **k):
        return self._timed(super().on_log)(*a, **k)


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step (from one step's end to the next)."""

    def __init__(self):
        self.times: list[float] = []
        self._t = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        if not self._t:
            self._t = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self.times.append(now - self._t)
        self._t = now


def run(monitored: bool, steps: int, batch: int, seq: int, out: str) -> tuple[float, float]:
    """(median step time, monitor's own seconds per step) of one training run."""
    torch.manual_seed(0)
    model = DeepseekV3ForCausalLM(tiny_deepseek_config())
    ids = torch.randint(3, model.config.vocab_size, (steps * batch, seq), generator=torch.Generator().manual_seed(0))
    data = [{"input_ids": x, "attention_mask": torch.ones_like(x), "labels": x.clone()} for x in ids]
    timer = StepTimer()
    callbacks: list[TrainerCallback] = [timer]
    monitor = TimedMonitor(model, f"{out}/tb") if monitored else None
    if monitor is not None:
        callbacks.insert(0, monitor)
    args = TrainingArguments(output_dir=out, max_steps=steps, per_device_train_batch_size=batch, learning_rate=1e-3,
                             logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    if monitor is not None:
        monitor.close()
    return statistics.median(timer.times[3:]), (monitor.spent / steps if monitor is not None else 0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=64)
    a = ap.parse_args()
    plain, monitored, own = [], [], []
    for _ in range(a.repeats):
        with tempfile.TemporaryDirectory() as d:
            plain.append(run(False, a.steps, a.batch, a.seq, d)[0])
        with tempfile.TemporaryDirectory() as d:
            step, spent = run(True, a.steps, a.batch, a.seq, d)
            monitored.append(step)
            own.append(spent)
    p, m = statistics.median(plain), statistics.median(monitored)
    print(f"step time without monitor: {p * 1000:.1f} ms (runs: {', '.join(f'{t * 1000:.1f}' for t in plain)})")
    print(f"step time with monitor (defaults): {m * 1000:.1f} ms (runs: {', '.join(f'{t * 1000:.1f}' for t in monitored)})")
    print(f"ratio with/without: {m / p:.3f} (target <= 1.10)")
    o = statistics.median(own)
    print(f"time inside the monitor's callbacks and hooks: {o * 1000:.1f} ms per step = "
          f"{o / p:.1%} of the unmonitored step (ratio if nothing else changed: {1 + o / p:.3f})")


if __name__ == "__main__":
    main()

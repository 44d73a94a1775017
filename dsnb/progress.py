"""Progress for long work that stays readable in notebooks, terminals and CI logs.

A tqdm bar redraws itself thousands of times, which turns into walls of text in CI logs and in
saved notebook outputs. ``LineProgress`` instead prints about ten lines per run, each with the
rate and the ETA, then a one-line summary. Used by every training run of the course. The lines go to
standard output by default, like the cell's other prints, so a notebook cell that trains keeps one
output block instead of alternating stdout and stderr blocks.
"""

from __future__ import annotations

import sys
import time

from transformers import TrainerCallback


def _fmt_seconds(s: float) -> str:
    s = int(round(s))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class LineProgress(TrainerCallback):
    """A ``TrainerCallback`` that prints ``lines`` evenly spaced progress lines and a summary."""

    def __init__(self, label: str = "training", lines: int = 10, stream=None):
        self.label = label
        self.lines = max(1, lines)
        self.stream = stream  # None: sys.stdout at print time (a notebook kernel swaps it per cell)
        self._start = 0.0
        self._next = 0
        self._last_loss: float | None = None

    def _print(self, msg: str) -> None:
        print(msg, file=self.stream or sys.stdout, flush=True)

    def on_train_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()
        self._next = max(1, state.max_steps // self.lines)
        self._print(f"{self.label}: {state.max_steps} steps")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self._last_loss = float(logs["loss"])

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self._next or state.global_step == state.max_steps:
            elapsed = time.perf_counter() - self._start
            rate = state.global_step / elapsed if elapsed > 0 else float("nan")
            eta = (state.max_steps - state.global_step) / rate if rate > 0 else float("nan")
            loss = f" last logged loss {self._last_loss:.3f}" if self._last_loss is not None else ""
            self._print(
                f"{self.label}: step {state.global_step}/{state.max_steps}{loss} "
                f"{rate:.2f} steps/s elapsed {_fmt_seconds(elapsed)} ETA {_fmt_seconds(eta)}"
            )
            self._next = state.global_step + max(1, state.max_steps // self.lines)

    def on_train_end(self, args, state, control, **kwargs):
        elapsed = time.perf_counter() - self._start
        loss = f", last logged loss {self._last_loss:.3f}" if self._last_loss is not None else ""
        self._print(f"{self.label}: done, {state.global_step} steps in {_fmt_seconds(elapsed)}{loss}")

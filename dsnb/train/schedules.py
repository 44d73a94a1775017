"""Learning-rate schedules for fine-tuning: linear warmup, then linear decay to a floor (claim C10).

The article's recipe is 3e-5 peak, 500 warmup steps, then a linear decay to 1e-6. transformers
already has exactly this shape: ``lr_scheduler_type="polynomial"`` with ``power=1.0`` and
``lr_end`` as the floor (``get_polynomial_decay_schedule_with_warmup``). So the course does not
write a scheduler; ``schedule_arguments`` returns the ``TrainingArguments`` fields that select it,
``warmup_linear_floor_lr`` is the formula written out (to teach it, and tested equal to the library),
and ``lr_curve`` reads the learning rate the trainer actually used from its log. Taught in notebook 03.

A tiny CPU run has a few hundred steps, not tens of thousands, so the defaults scale the warmup down
with ``scaled_warmup_steps`` (500 of an assumed 10 000-step real run is 5% of training).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import get_scheduler

from dsnb.train.logs import logged

#: The article's real-scale values (claim C10).
REAL_PEAK_LR = 3e-5
REAL_WARMUP_STEPS = 500
REAL_FLOOR_LR = 1e-6
#: The run length the 500 warmup steps are taken to belong to when scaling them down.
REAL_TOTAL_STEPS = 10_000


def scaled_warmup_steps(max_steps: int, real_warmup: int = REAL_WARMUP_STEPS, real_total: int = REAL_TOTAL_STEPS) -> int:
    """Warmup steps for a run of ``max_steps`` that keep the real recipe's warmup fraction.

    Always fewer than ``max_steps`` (so the decay phase is never empty) and at least 1 when that
    leaves room, i.e. from ``max_steps = 2`` on; a 1-step run has no warmup.
    """
    if max_steps < 1:
        raise ValueError(f"max_steps must be at least 1, got {max_steps}")
    return min(max(1, round(max_steps * real_warmup / real_total)), max_steps - 1)


def schedule_arguments(warmup_steps: int, floor_lr: float) -> dict[str, Any]:
    """``TrainingArguments`` fields for linear warmup then linear decay to ``floor_lr`` (notebook 03)."""
    if floor_lr < 0:
        raise ValueError(f"floor_lr must be >= 0, got {floor_lr}")
    return {
        "lr_scheduler_type": "polynomial",
        "lr_scheduler_kwargs": {"lr_end": float(floor_lr), "power": 1.0},
        "warmup_steps": int(warmup_steps),
    }


def warmup_linear_floor_lr(step: int, peak_lr: float, warmup_steps: int, total_steps: int, floor_lr: float) -> float:
    """The learning rate at optimizer step ``step`` (0-based), written out: the formula notebook 03 teaches.

    Rises linearly from 0 to ``peak_lr`` over ``warmup_steps``, then falls linearly to ``floor_lr`` at
    ``total_steps`` and stays there.
    """
    if step < warmup_steps:
        return peak_lr * step / max(1, warmup_steps)
    if step >= total_steps:
        return floor_lr
    remaining = 1 - (step - warmup_steps) / (total_steps - warmup_steps)
    return (peak_lr - floor_lr) * remaining + floor_lr


def library_lr_curve(peak_lr: float, warmup_steps: int, total_steps: int, floor_lr: float) -> list[float]:
    """The learning rates transformers' own scheduler gives for steps ``0..total_steps-1``."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak_lr)
    sched = get_scheduler(
        "polynomial", opt, num_warmup_steps=warmup_steps, num_training_steps=total_steps,
        scheduler_specific_kwargs={"lr_end": floor_lr, "power": 1.0},
    )
    lrs = []
    for _ in range(total_steps):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return lrs


def lr_curve(log_history: list[dict[str, Any]]) -> tuple[list[int], list[float]]:
    """(steps, learning rates) as the trainer logged them: what the run really used, not the formula."""
    steps, rates = logged(log_history, "learning_rate")
    if not steps:
        raise ValueError("the log has no 'learning_rate' entries; train with logging_steps set and report the log")
    return steps, rates

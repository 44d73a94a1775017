"""Exercise checks for notebook 03 (supervised fine-tuning). Expected values are computed by dsnb."""

from __future__ import annotations

from dsnb.exercises import check_number
from dsnb.train.config import effective_batch
from dsnb.train.schedules import REAL_FLOOR_LR, REAL_PEAK_LR, REAL_WARMUP_STEPS, warmup_linear_floor_lr

#: The real-scale run the exercises talk about.
REAL_TOTAL = 10_000


def check_lr_at_step(answer: float | None, step: int = 5_250) -> bool:
    """Exercise 1: the article's schedule (3e-5 peak, 500 warmup, linear to 1e-6 at 10 000 steps) at ``step``."""
    expected = warmup_linear_floor_lr(step, REAL_PEAK_LR, REAL_WARMUP_STEPS, REAL_TOTAL, REAL_FLOOR_LR)
    return check_number("1 (learning rate)", answer, expected, rel_tol=0.01,
                        hint="past warmup the LR falls on a straight line from 3e-5 at step 500 to 1e-6 at step 10 000.")


def check_effective_batch(answer: float | None, per_device: int = 4, accumulation: int = 8, gpus: int = 4) -> bool:
    """Exercise 2: sequences per optimizer step for ``per_device`` × ``accumulation`` on ``gpus`` GPUs."""
    return check_number("2 (effective batch)", answer, effective_batch(per_device, accumulation, gpus), rel_tol=0,
                        hint="multiply the per-device batch, the accumulation steps and the number of processes.")


def check_lora_share(answer: float | None, trainable: int, total: int) -> bool:
    """Exercise 3: the share (0-1) of parameters LoRA trains, from the counts the notebook printed."""
    return check_number("3 (LoRA share)", answer, trainable / total, rel_tol=0.05,
                        hint="trainable parameters divided by all parameters (adapters included).")

"""The warmup-then-linear-decay-to-a-floor schedule (claim C10) is transformers' own, and matches the formula."""

from __future__ import annotations

import math

import pytest

from dsnb.train.schedules import (
    REAL_FLOOR_LR,
    REAL_PEAK_LR,
    REAL_TOTAL_STEPS,
    REAL_WARMUP_STEPS,
    library_lr_curve,
    lr_curve,
    scaled_warmup_steps,
    schedule_arguments,
    warmup_linear_floor_lr,
)


def test_formula_equals_library_at_real_scale():
    total = 2000
    lib = library_lr_curve(REAL_PEAK_LR, REAL_WARMUP_STEPS, total, REAL_FLOOR_LR)
    mine = [warmup_linear_floor_lr(s, REAL_PEAK_LR, REAL_WARMUP_STEPS, total, REAL_FLOOR_LR) for s in range(total)]
    for a, b in zip(lib, mine, strict=True):
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-15)
    assert lib[0] == 0.0
    assert math.isclose(max(lib), REAL_PEAK_LR)
    assert lib.index(max(lib)) == REAL_WARMUP_STEPS
    assert math.isclose(warmup_linear_floor_lr(total, REAL_PEAK_LR, REAL_WARMUP_STEPS, total, REAL_FLOOR_LR),
                        REAL_FLOOR_LR)
    assert min(lib[REAL_WARMUP_STEPS:]) > REAL_FLOOR_LR * 0.99  # after warmup, never below the floor


def test_scaled_warmup_keeps_the_fraction():
    fraction = REAL_WARMUP_STEPS / REAL_TOTAL_STEPS
    assert scaled_warmup_steps(REAL_TOTAL_STEPS) == REAL_WARMUP_STEPS
    for n in range(1, 3001):
        w = scaled_warmup_steps(n)
        assert 0 <= w < n, n  # the decay phase is never empty
        assert w >= 1 or n == 1, n  # at least one warmup step whenever there is room for it
        assert abs(w - n * fraction) <= max(1, 0.5 + 1e-9), n  # the real recipe's fraction, rounded
    with pytest.raises(ValueError):
        scaled_warmup_steps(0)


def test_schedule_arguments_select_polynomial_power_one():
    args = schedule_arguments(7, 1e-6)
    assert args["lr_scheduler_type"] == "polynomial"
    assert args["lr_scheduler_kwargs"] == {"lr_end": 1e-6, "power": 1.0}
    assert args["warmup_steps"] == 7
    with pytest.raises(ValueError):
        schedule_arguments(1, -1.0)


def test_lr_curve_reads_the_log():
    log = [{"step": 1, "learning_rate": 0.1, "loss": 3.0}, {"step": 2, "eval_loss": 2.0},
           {"step": 3, "learning_rate": 0.05}]
    assert lr_curve(log) == ([1, 3], [0.1, 0.05])
    with pytest.raises(ValueError, match="learning_rate"):
        lr_curve([{"step": 1, "loss": 1.0}])


def test_logged_reads_one_metric_in_step_order():
    from dsnb.train.logs import logged

    history = [{"step": 1, "loss": 2.5, "learning_rate": 1e-3}, {"step": 2, "eval_loss": 2.0},
               {"step": 3, "loss": 2.25}]
    assert logged(history, "loss") == ([1, 3], [2.5, 2.25])
    assert logged(history, "eval_loss") == ([2], [2.0]) and logged(history, "missing") == ([], [])

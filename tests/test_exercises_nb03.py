"""Notebook 03's exercise checks accept right answers and reject wrong ones."""

from __future__ import annotations

from dsnb.exercises import nb03
from dsnb.train.schedules import warmup_linear_floor_lr


def test_lr_at_step(capsys):
    right = warmup_linear_floor_lr(5_250, 3e-5, 500, 10_000, 1e-6)
    assert nb03.check_lr_at_step(right)
    assert abs(right - 1.55e-5) < 1e-9
    assert not nb03.check_lr_at_step(3e-5)
    assert not nb03.check_lr_at_step(None)
    assert "Hint" in capsys.readouterr().out


def test_effective_batch():
    assert nb03.check_effective_batch(128)
    assert not nb03.check_effective_batch(32)


def test_lora_share():
    assert nb03.check_lora_share(0.1, 100, 1000)
    assert not nb03.check_lora_share(0.5, 100, 1000)

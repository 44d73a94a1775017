"""Notebook 07's exercise checks accept right answers and reject wrong ones."""

from __future__ import annotations

import math

from dsnb.exercises import nb07


def test_global_norm(capsys):
    right = math.sqrt(0.6**2 + 0.8**2 + 2.4**2)  # 2.6
    assert abs(nb07.global_norm() - right) < 1e-5
    assert nb07.check_global_norm(right)
    assert not nb07.check_global_norm(0.6 + 0.8 + 2.4)  # norms added, not squares
    assert not nb07.check_global_norm(None)
    assert "Hint" in capsys.readouterr().out
    assert "2.6000" in nb07.SOLUTIONS.text(1)


def test_imbalance_counts_the_dead_expert():
    right = 410 / (1024 / 8)
    assert abs(nb07.busiest_over_mean() - right) < 1e-6
    assert nb07.check_imbalance(right)
    assert not nb07.check_imbalance(410 / (1024 / 7))  # the dead expert left out of the mean


def test_lr_after_bad_steps_stops_at_the_floor():
    assert nb07.lr_after_bad_steps() == 1e-6  # 2e-4 -> 2e-5 -> 2e-6 -> 2e-7, floored at 1e-6
    assert nb07.lr_after_bad_steps(bad_steps=1) == 2e-5
    assert nb07.check_lr_after_bad_steps(1e-6)
    assert not nb07.check_lr_after_bad_steps(2e-7)  # the floor ignored

"""Notebook 07's exercise checks accept right answers and reject wrong ones."""

from __future__ import annotations

import math
import statistics

from dsnb.exercises import nb07


def test_global_norm(capsys):
    right = math.sqrt(0.35**2 + 1.2**2 + 2.9**2)
    assert abs(nb07.global_norm() - right) < 1e-5
    assert nb07.check_global_norm(right)
    assert not nb07.check_global_norm(0.35 + 1.2 + 2.9)  # norms added, not squares
    assert not nb07.check_global_norm(None)
    assert "Hint" in capsys.readouterr().out
    assert "3.1579" in nb07.SOLUTIONS.text(1)


def test_imbalance_counts_the_dead_expert():
    right = 468 / (1090 / 8)
    assert abs(nb07.busiest_over_mean() - right) < 1e-6
    assert nb07.check_imbalance(right)
    assert not nb07.check_imbalance(468 / (1090 / 7))  # the dead expert left out of the mean


def test_steps_a_calibrated_band_flags():
    window = [v for s, v in nb07.EX3_NORMS.items() if 25 < s <= 35]
    median = statistics.median(window)
    later = {s: v for s, v in nb07.EX3_NORMS.items() if s > 35}
    by_hand = {s for s, v in later.items() if not median / 2 <= v <= median * 2}
    assert nb07.alerting_steps() == by_hand == {38, 41, 44}
    assert nb07.check_alerting_steps({38, 41, 44}) and nb07.check_alerting_steps("steps 44, 38 and 41")
    fixed = {s for s, v in later.items() if not 0.7 <= v <= 1.3}
    assert not nb07.check_alerting_steps(fixed)  # the article's fixed band
    assert not nb07.check_alerting_steps({38, 44})  # the step that fell below the band forgotten
    assert "[38, 44]" in nb07.SOLUTIONS.text(3)  # the spikes the fixed band misses

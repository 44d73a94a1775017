"""Notebook 05's exercise checks accept right answers (and aliases) and reject wrong ones."""

from __future__ import annotations

import math

import torch

from dsnb.exercises import nb05
from dsnb.train.adversarial import fgsm_delta


def test_epsilon_for_a_target_step(capsys):
    right = 0.04 * 0.95 / math.sqrt(4096)
    assert abs(nb05.expected_epsilon() - right) < 1e-12
    grad = torch.randn(1, 1, 4096, dtype=torch.float64)
    assert abs(fgsm_delta(grad, right).norm().item() - 0.04 * 0.95) < 1e-9  # the step really is 4% of the norm
    assert nb05.check_epsilon(right)
    assert not nb05.check_epsilon(0.04 * 0.95)  # the whole step put on one coordinate
    assert not nb05.check_epsilon(0.04 * 0.95 / 4096)  # divided by d instead of sqrt(d)
    assert not nb05.check_epsilon(None)
    assert "Hint" in capsys.readouterr().out


def test_stage_bounds_are_the_thirds_of_the_data():
    ordered = sorted(nb05.EX2_LENGTHS)
    assert nb05.expected_stage_bounds() == (ordered[3], ordered[7]) == (75, 210)
    assert nb05.check_stage_bounds((75, 210)) and nb05.check_stage_bounds("75 and 210 tokens")
    assert not nb05.check_stage_bounds((512, 1024))  # the article's fixed bounds
    assert not nb05.check_stage_bounds((96, 388))  # the example after each third


def test_smoothing_floor():
    v, a = 102_400, 0.2
    q = 1 - a + a / v
    right = -q * math.log(q) - (v - 1) * (a / v) * math.log(a / v)
    assert abs(nb05.expected_smoothing_floor() - right) < 1e-3  # float32 log-softmax
    assert nb05.check_smoothing_floor(right) and nb05.check_smoothing_floor(2.81)
    assert not nb05.check_smoothing_floor(0.0)
    assert not nb05.check_smoothing_floor(-math.log(1 - a))  # only the right token's term


def test_solutions_print(capsys):
    for n in (1, 2, 3):
        nb05.solution(n)
    out = capsys.readouterr().out
    assert "0.0005937" in out and "(75, 210)" in out and "entropy" in out

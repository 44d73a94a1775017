"""Notebook 05's exercise checks accept right answers (and aliases) and reject wrong ones."""

from __future__ import annotations

import math

from dsnb.exercises import nb05


def test_fgsm_norm(capsys):
    right = 0.01 * math.sqrt(7168)
    assert abs(nb05.expected_fgsm_norm() - right) < 1e-9
    assert nb05.check_fgsm_norm(right)
    assert not nb05.check_fgsm_norm(0.01)  # per coordinate, not per token
    assert not nb05.check_fgsm_norm(None)
    assert "Hint" in capsys.readouterr().out


def test_stage_bounds():
    assert nb05.expected_bounds() == (128, 256)
    assert nb05.check_stage_bounds((128, 256)) and nb05.check_stage_bounds("128, 256")
    assert not nb05.check_stage_bounds((512, 1024))


def test_smoothing_floor():
    v, a = 129_280, 0.1
    q = 1 - a + a / v
    right = -q * math.log(q) - (v - 1) * (a / v) * math.log(a / v)
    assert abs(nb05.expected_smoothing_floor() - right) < 1e-3  # float32 log-softmax
    assert nb05.check_smoothing_floor(right)
    assert not nb05.check_smoothing_floor(0.0)


def test_solutions_print(capsys):
    for n in (1, 2, 3):
        nb05.solution(n)
    out = capsys.readouterr().out
    assert "7168" in out and "(128, 256)" in out and "entropy" in out

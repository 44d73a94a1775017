"""Notebook 09's exercise checks accept right answers and reject wrong ones."""

from __future__ import annotations

import math

import pytest

from dsnb.exercises import nb09


def test_checkpoint_gb(capsys):
    assert nb09.check_checkpoint_gb(236e9 * (0.5 + 3 / 64) / 1e9)
    assert not nb09.check_checkpoint_gb(236e9 * (0.5 + 3 / 128) / 1e9)  # the page's group size 128
    assert not nb09.check_checkpoint_gb(118)  # codes only, no scales or zeros
    assert not nb09.check_checkpoint_gb(None)
    assert "Hint" in capsys.readouterr().out


def test_decode_ceiling_ratio():
    assert nb09.check_decode_ceiling_ratio(1 / (0.5 + 3 / 128))  # over FP8 weights
    assert not nb09.check_decode_ceiling_ratio(2 / (0.5 + 3 / 128))  # over bf16, the page's case
    assert not nb09.check_decode_ceiling_ratio(2.0)  # forgot the scales and zero points
    assert nb09.decode_ceiling_ratio(8, 128) == pytest.approx(2 / (1 + 3 / 128))


def test_std_for_share():
    sigma = nb09.std_for_share(0.40)
    assert math.erf(0.01 / (sigma * math.sqrt(2))) == pytest.approx(0.40, abs=1e-6)
    assert nb09.check_std_for_share(0.0191)
    assert not nb09.check_std_for_share(0.02)


def test_solutions(capsys):
    for n in (1, 2, 3):
        nb09.solution(n)
    out = capsys.readouterr().out
    assert f"{nb09.checkpoint_gb(236e9, 4, 64):.1f} GB" in out and f"{nb09.decode_ceiling_ratio(4, 128, 1.0):.2f}×" in out
    with pytest.raises(ValueError):
        nb09.solution(4)

"""Notebook 11's exercise checks accept right answers and reject wrong ones."""

from __future__ import annotations

import math

import pytest

from dsnb.exercises import nb11


def test_global_batch():
    assert nb11.check_global_batch(144)
    assert not nb11.check_global_batch(132)  # a multiple of 6 processes, but 22 per process is not 4 × k
    assert not nb11.check_global_batch(None)


def test_js():
    m = (0.5, 0.25, 0.25)
    right = ((0.75 * math.log2(0.75 / m[0]) + 0.25 * math.log2(0.25 / m[1]))
             + (0.25 * math.log2(0.25 / m[0]) + 0.25 * math.log2(0.25 / m[1]) + 0.5 * math.log2(0.5 / m[2]))) / 2
    assert nb11.check_js(right)
    assert not nb11.check_js(right * math.log(2))  # nats, not bits


def test_spike_threshold():
    assert nb11.spike_threshold() == pytest.approx(3 * 2.20, rel=1e-6)  # median of the last 5, not of all 7
    assert nb11.check_spike_threshold(6.6)
    assert not nb11.check_spike_threshold(3 * 2.26)  # median of all seven
    assert not nb11.check_spike_threshold(3 * sum(nb11.EX3_LOSSES[-5:]) / 5)  # mean of the window


def test_solutions(capsys):
    for n in (1, 2, 3):
        nb11.solution(n)
    out = capsys.readouterr().out
    assert "144" in out and "6.60" in out
    with pytest.raises(ValueError):
        nb11.solution(4)

"""Notebook 10's exercise checks accept right answers and reject wrong ones."""

from __future__ import annotations

import pytest

from dsnb.exercises import nb10


def test_sample_size(capsys):
    assert nb10.check_sample_size(39_500)
    assert not nb10.check_sample_size(3_950)
    assert not nb10.check_sample_size(None)
    assert "Hint" in capsys.readouterr().out


def test_recovered_share_is_one_over_r():
    for r in (1, 2, 5, 8):
        assert nb10.recovered_share(r) == pytest.approx(1 / r)
    assert nb10.check_recovered_share(0.125)
    assert not nb10.check_recovered_share(0.5)


def test_tokens_in_budget():
    right = nb10.tokens_in_budget()
    per_token = 33.34e9 * 2 / (4.8e12 * 0.75)
    assert right == pytest.approx((0.8 - 2 * 33.34e9 * 200 / (989e12 * 0.5)) / per_token, rel=0.01)
    assert nb10.check_tokens_in_budget(right)
    assert not nb10.check_tokens_in_budget(right * 2)


def test_solutions(capsys):
    for n in (1, 2, 3):
        nb10.solution(n)
    out = capsys.readouterr().out
    assert "0.1250" in out and "users per variant" in out and "tokens" in out
    with pytest.raises(ValueError):
        nb10.solution(4)

"""Notebook 10's exercise checks accept right answers and reject wrong ones."""

from __future__ import annotations

import pytest

from dsnb.exercises import nb10


def test_sample_size(capsys):
    assert nb10.check_sample_size(39_500)
    assert not nb10.check_sample_size(3_950)
    assert not nb10.check_sample_size(None)
    assert "Hint" in capsys.readouterr().out


def test_recovered_share():
    for r in (1, 2, 5, 8):
        assert nb10.recovered_share(r, "last") == pytest.approx(1 / r)  # the page's rule
    assert nb10.recovered_share(3) == pytest.approx(0.5)  # majority of 3: B on 2 or 3 of 3 vs 0 or 1
    assert nb10.check_recovered_share(0.375)
    assert not nb10.check_recovered_share(0.2)  # last-request credit, 1/R
    with pytest.raises(ValueError, match="odd"):
        nb10.recovered_share(4)


def test_tokens_in_budget():
    right = nb10.tokens_in_budget()
    assert 150 < right < 300  # ~2.7 B active parameters read per token at 2.039 TB/s × 0.75
    assert nb10.check_tokens_in_budget(right)
    assert not nb10.check_tokens_in_budget(right / 5.9)  # all 15.7 B parameters counted as read


def test_solutions(capsys):
    for n in (1, 2, 3):
        nb10.solution(n)
    out = capsys.readouterr().out
    assert "0.3750" in out and "users per variant" in out and "tokens" in out
    with pytest.raises(ValueError):
        nb10.solution(4)

"""Notebook 02's exercise checks accept the right answers and reject wrong ones, including the figures the
page itself uses (its 0.8 threshold, its batch of 16)."""

from __future__ import annotations

import pytest

from dsnb.data.dialogue import batch_distinct_n
from dsnb.exercises import nb02


def test_threshold_exercise(capsys):
    # 12 words, 10 word 3-grams each; "raise" -> "raises" changes 3 of them: 7 shared of 13
    assert nb02.highest_removing_threshold() == pytest.approx(7 / 13)
    assert nb02.check_threshold(7 / 13)
    assert not nb02.check_threshold(0.8)  # the page's threshold misses two of the pairs
    assert not nb02.check_threshold(0.857)  # the most similar pair, not the least
    assert not nb02.check_threshold(None)
    assert "Hint" in capsys.readouterr().out
    assert nb02.duplicate_sample_texts() == nb02.DUPLICATE_TEXTS


def test_distinct_1_exercise():
    right = batch_distinct_n(nb02.QUERY_LOG, 1, batch=8)
    assert nb02.check_distinct_1(right)
    assert not nb02.check_distinct_1(batch_distinct_n(nb02.QUERY_LOG, 1, batch=16))  # the page's batch
    assert not nb02.check_distinct_1(batch_distinct_n(nb02.QUERY_LOG, 2, batch=8))  # word pairs
    assert len(nb02.QUERY_LOG) == 40 and len(set(nb02.QUERY_LOG)) == 40


def test_kept_share_exercise():
    assert nb02.check_kept_share(3 / 7)  # newest, human, Tree.files
    assert not nb02.check_kept_share(4 / 7)  # "kind" has complexity 3: "> 3" is strict
    assert nb02.kept_share(above=2) == pytest.approx(4 / 7)


def test_solutions(capsys):
    for n in (1, 2, 3):
        nb02.solution(n)
    out = capsys.readouterr().out
    assert f"{nb02.highest_removing_threshold():.4f}" in out
    assert f"{batch_distinct_n(nb02.QUERY_LOG, 1, batch=8):.4f}" in out
    assert "3 of 7" in out
    with pytest.raises(ValueError):
        nb02.solution(4)

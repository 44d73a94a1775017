"""Notebook 02's exercise checks accept the right answers and reject wrong ones, including the
duplicate rate of the sample rows the notebook deduplicates on the page."""

from __future__ import annotations

from dsnb.exercises import nb02


def test_duplicate_rate_exercise(capsys):
    assert nb02.check_duplicate_rate(3 / 10)  # two exact copies, one near copy
    assert not nb02.check_duplicate_rate(2 / 10)  # exact duplicates only
    assert not nb02.check_duplicate_rate(4 / 10)  # the one-word change ("bytes" -> "characters") is no duplicate
    assert not nb02.check_duplicate_rate(3 / 8)  # the sample file's rate, shown in the notebook
    assert not nb02.check_duplicate_rate(None)
    assert "Hint" in capsys.readouterr().out
    assert nb02.duplicate_sample_texts() == nb02.DUPLICATE_TEXTS
    assert not set(nb02.EXERCISE_TEXTS) & set(nb02.DUPLICATE_TEXTS)


def test_distinct_2_exercise():
    # bigrams: how-do do-i i-copy copy-a a-file | how-do do-i i-move move-a a-file |
    # what-does does-shutil shutil-copy copy-do | explain-shutil shutil-move -> 13 distinct of 16
    assert nb02.check_distinct_2(13 / 16)
    assert not nb02.check_distinct_2(0.5)


def test_complexity_exercise():
    assert nb02.check_complexity(7)
    assert not nb02.check_complexity(6)


def test_solutions(capsys):
    for n in (1, 2, 3):
        nb02.solution(n)
    out = capsys.readouterr().out
    assert "= 3 / 10 = 0.30" in out and "13 / 16" in out and "1 + 6 = 7" in out

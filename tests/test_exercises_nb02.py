"""Notebook 02's exercise checks accept the right answers and reject wrong ones."""

from __future__ import annotations

from dsnb.exercises import nb02


def test_duplicate_rate_exercise(capsys):
    assert nb02.check_duplicate_rate(3 / 8)
    assert not nb02.check_duplicate_rate(2 / 8)  # exact duplicates only
    assert not nb02.check_duplicate_rate(None)
    assert "Hint" in capsys.readouterr().out
    assert nb02.duplicate_sample_texts() == nb02.DUPLICATE_TEXTS


def test_distinct_2_exercise():
    # bigrams: how-do do-i i-copy copy-a a-file | how-do do-i i-move move-a a-file |
    # what-does does-shutil shutil-copy copy-do | explain-shutil shutil-move -> 13 distinct of 16
    assert nb02.check_distinct_2(13 / 16)
    assert not nb02.check_distinct_2(0.5)


def test_complexity_exercise():
    assert nb02.check_complexity(7)
    assert not nb02.check_complexity(6)

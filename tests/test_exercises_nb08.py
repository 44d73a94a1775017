"""Notebook 08's exercise checks accept right answers and reject wrong ones."""

from __future__ import annotations

from dsnb.exercises import nb08


def test_qk_savings():
    right = 4096 * 4096 * 30
    assert nb08.qk_sharing_savings(4096, 30, 32, 32) == right
    assert nb08.qk_sharing_savings(4096, 30, 32, 8) == 0
    assert nb08.check_qk_savings_7b(right)
    assert not nb08.check_qk_savings_7b(right * 2)
    assert not nb08.check_qk_savings_7b(None)


def test_checkpointing_saving():
    assert nb08.check_checkpointing_saving(0.6, 100.0, 40.0)
    assert not nb08.check_checkpointing_saving(0.4, 100.0, 40.0)

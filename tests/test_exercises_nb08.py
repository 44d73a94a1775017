"""Notebook 08's exercise checks accept right answers and reject wrong ones, including the saving the
notebook measures on its tiny model."""

from __future__ import annotations

from dsnb.exercises import nb08
from dsnb.plan.memory import TrainingPlan, estimate_training_memory


def test_qk_savings():
    right = 4096 * 4096 * 30
    assert nb08.qk_sharing_savings(4096, 30, 32, 32) == right
    assert nb08.qk_sharing_savings(4096, 30, 32, 8) == 0
    assert nb08.check_qk_savings_7b(right)
    assert not nb08.check_qk_savings_7b(right * 2)
    assert not nb08.check_qk_savings_7b(None)


def test_checkpointing_saving():
    plan = TrainingPlan(seq_len=4096)
    a = estimate_training_memory("deepseek-coder-33b-base", plan).activations
    b = estimate_training_memory("deepseek-coder-33b-base", plan, gradient_checkpointing=True).activations
    assert 0 < b < a
    assert nb08.check_checkpointing_saving(1 - b / a)
    assert not nb08.check_checkpointing_saving(b / a)  # the share kept, not saved
    assert not nb08.check_checkpointing_saving(0.5)
    assert not nb08.check_checkpointing_saving(nb08.expected_checkpointing_saving("deepseek-coder-6.7b-base"))  # 00's


def test_solutions(capsys):
    nb08.solution(1)
    nb08.solution(2)
    out = capsys.readouterr().out
    assert "503,316,480" in out and f"{nb08.expected_checkpointing_saving():.1%}" in out
    assert "this 62-layer model" in out  # deepseek-coder-33b's config

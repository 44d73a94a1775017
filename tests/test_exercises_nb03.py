"""Notebook 03's exercise checks accept right answers and reject wrong ones, including the figures the
notebook prints for its own settings."""

from __future__ import annotations

from dsnb.exercises import nb03
from dsnb.train.schedules import library_lr_curve, warmup_linear_floor_lr


def test_run_length_from_the_logged_lr(capsys):
    peak, warmup, total = nb03.EX1_RUN
    curve = library_lr_curve(peak, warmup, total, nb03.EX1_FLOOR)  # transformers' scheduler, step by step
    for step, logged in nb03.EX1_LOGGED:  # the question's dashboard figures are the run's own
        assert abs(curve[step] - logged) < 1e-12 + 1e-9 * logged
        assert abs(warmup_linear_floor_lr(step, peak, warmup, total, nb03.EX1_FLOOR) - logged) < 1e-12
    assert abs(nb03.expected_total_steps() - total) < 1e-6
    assert nb03.check_total_steps(total)
    assert not nb03.check_total_steps(10_000)  # the article's run, not this one
    assert not nb03.check_total_steps(nb03.EX1_LOGGED[1][0])  # the last logged step
    assert not nb03.check_total_steps(None)
    assert "Hint" in capsys.readouterr().out


def test_tokens_per_step():
    assert nb03.expected_tokens_per_step() == 4 * 6 * 8 * 4096
    assert nb03.check_tokens_per_step(786_432)
    assert not nb03.check_tokens_per_step(4 * 8 * 4096)  # accumulation forgotten
    assert not nb03.check_tokens_per_step(4 * 6 * 4096)  # the GPUs forgotten


def test_lora_parameters_of_a_real_model():
    h, m, layers, r = 4096, 11008, 32, 16  # deepseek-coder-6.7b-base, rank 16, every decoder linear layer
    right = layers * r * (4 * (h + h) + 3 * (h + m))
    assert nb03.expected_lora_parameters() == right == 39_976_960
    assert nb03.check_lora_parameters(right)
    assert not nb03.check_lora_parameters(layers * r * 4 * (h + h))  # attention only
    assert not nb03.check_lora_parameters(right / 2)  # the notebook's rank 8
    assert not nb03.check_lora_parameters(right / layers)  # one layer


def test_solutions(capsys):
    for n in (1, 2, 3):
        nb03.solution(n)
    out = capsys.readouterr().out
    assert "3,350" in out and "786,432" in out and "r·(in + out)" in out

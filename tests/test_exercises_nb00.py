"""The exercise checks of notebook 00 accept right answers (and their aliases) and reject wrong ones,
including the figures the notebook itself prints for the neighbouring setting."""

from __future__ import annotations

import pytest

from dsnb.exercises import nb00
from dsnb.plan.memory import GiB, TrainingPlan, estimate_training_memory
from dsnb.plan.shape import ModelShape, load_model_config


def test_bytes_per_param(capsys):
    assert nb00.check_bytes_per_param(12)  # 2 + 2 + 4 master + 4 momentum
    assert not nb00.check_bytes_per_param(16)  # AdamW's figure, printed in the notebook
    assert not nb00.check_bytes_per_param(8)  # forgot the momentum buffer
    assert not nb00.check_bytes_per_param("twelve")
    assert not nb00.check_bytes_per_param(None)
    assert "not answered yet" in capsys.readouterr().out


def test_zero2_gib():
    n = ModelShape.from_config(load_model_config("deepseek-coder-33b-base")).parameter_count()
    right = (2 * n + 14 * n / 8) / GiB
    assert nb00.check_zero_gib(right)
    assert not nb00.check_zero_gib(16 * n / 8 / GiB)  # that is ZeRO-3
    assert not nb00.check_zero_gib(16 * n / GiB)  # not partitioned
    printed = estimate_training_memory("llama-13b", TrainingPlan(zero_stage=2, num_gpus=8)).model_states / GiB
    assert not nb00.check_zero_gib(printed)  # the notebook's own ZeRO plot is for llama-13b


def test_host_ram():
    n = ModelShape.from_config(load_model_config("deepseek-coder-33b-base")).parameter_count()
    assert nb00.check_host_ram(24 * n / GiB)  # (4 fp32 grads + 4 master + 8 Adam) × 1.5 pinned buffers
    assert not nb00.check_host_ram(14 * n / GiB)  # the minimum accounting: 16-bit grads, no buffers
    assert not nb00.check_host_ram(24 * n / 8 / GiB)  # one GPU's share: the node holds all of them
    assert nb00.expected_host_ram_gib("minimum") < nb00.expected_host_ram_gib()
    assert not nb00.check_host_ram(None)


def test_solutions_print_the_computed_answers(capsys):
    for n in (1, 2, 3):
        nb00.solution(n)
    out = capsys.readouterr().out
    assert f"{nb00.expected_bytes_per_param():g} bytes" in out
    assert f"{nb00.expected_zero_gib():.1f} GiB" in out
    assert f"{nb00.expected_host_ram_gib():.1f} GiB" in out
    with pytest.raises(ValueError, match="exercises"):
        nb00.solution(4)

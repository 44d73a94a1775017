"""The exercise checks of notebook 00 accept the right answers and reject wrong ones."""

from __future__ import annotations

from dsnb.exercises import nb00
from dsnb.plan.estimate import GiB, ModelShape, load_model_config


def test_bytes_per_param(capsys):
    assert nb00.check_bytes_per_param(16)
    assert not nb00.check_bytes_per_param(2)  # only the weights
    assert not nb00.check_bytes_per_param(8)  # forgot the fp32 master copy and gradients
    assert not nb00.check_bytes_per_param(None)
    assert "not answered yet" in capsys.readouterr().out


def test_zero3_gib():
    n = ModelShape.from_config(load_model_config("deepseek-coder-6.7b-base")).parameter_count()
    right = 16 * n / 4 / GiB  # ZeRO-3: all 16 bytes per parameter split over 4 GPUs
    assert nb00.check_zero3_gib(right)
    assert not nb00.check_zero3_gib(16 * n / GiB)  # not partitioned
    assert not nb00.check_zero3_gib((2 + 2 + 12 / 4) * n / GiB)  # that is ZeRO-1


def test_fix():
    expected = nb00.expected_fix()
    assert expected == "QLoRA r=16"  # 6.7B full needs ~100 GiB of states; LoRA's 16-bit base alone is 12.6 GiB
    assert nb00.check_fix("QLoRA r=16")
    assert not nb00.check_fix("gradient checkpointing")
    assert not nb00.check_fix(None)

"""Notebook 03's exercise checks accept right answers and reject wrong ones, including the figures the
notebook prints for its own settings."""

from __future__ import annotations

import torch
from torch import nn
from transformers import DeepseekV3ForCausalLM

from dsnb.exercises import nb03
from dsnb.model.lora import lora_target_modules
from dsnb.model.pretrain import tiny_deepseek_config
from dsnb.train.schedules import warmup_linear_floor_lr


def test_lr_at_step(capsys):
    right = warmup_linear_floor_lr(5_250, 3e-5, 500, 10_000, 1e-6)
    assert abs(right - 1.55e-5) < 1e-9
    assert nb03.check_lr_at_step(right)
    assert not nb03.check_lr_at_step(3e-5)
    assert not nb03.check_lr_at_step(None)
    assert "Hint" in capsys.readouterr().out


def test_accumulation():
    assert nb03.check_accumulation(4)  # 128 / (4 x 8)
    assert not nb03.check_accumulation(32)  # forgot the GPUs
    assert not nb03.check_accumulation(1)


def test_lora_share_by_hand_matches_peft():
    torch.manual_seed(0)
    model = DeepseekV3ForCausalLM(tiny_deepseek_config())
    base_n = sum(p.numel() for p in model.parameters())
    targets = set(lora_target_modules(model))
    lora_n = sum(32 * (m.in_features + m.out_features) for name, m in model.named_modules()
                 if isinstance(m, nn.Linear) and name.split(".")[-1] in targets and ".layers." in name)
    right = lora_n / (base_n + lora_n)
    assert abs(nb03.expected_lora_share(model) - right) < 1e-9
    assert nb03.check_lora_share(right, model)
    rank8 = lora_n / 4 / (base_n + lora_n / 4)  # the notebook's printed share (rank 8)
    assert not nb03.check_lora_share(rank8, model)
    assert sum(p.numel() for p in model.parameters()) == base_n  # the check works on a copy


def test_solutions(capsys):
    for n in (1, 2, 3):
        nb03.solution(n)
    out = capsys.readouterr().out
    assert "1.55e-05" in out and "= 4" in out and "r·(in + out)" in out

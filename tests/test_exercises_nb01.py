from __future__ import annotations

import torch
from transformers import DeepseekV3ForCausalLM

from dsnb.exercises import nb01
from dsnb.model.pretrain import tiny_deepseek_config


def test_cache_exercise(capsys):
    expected = 576 * 61 * 2 * 32_768 / 2**30  # latent 512 + rope 64 per layer, 61 layers, bf16
    assert nb01.check_v3_cache_gib(expected)
    assert not nb01.check_v3_cache_gib(expected * 71)  # the MHA-sized answer is wrong
    assert not nb01.check_v3_cache_gib(None)
    assert "not answered yet" in capsys.readouterr().out


def test_active_share_exercise():
    torch.manual_seed(0)
    model = DeepseekV3ForCausalLM(tiny_deepseek_config())
    total = sum(p.numel() for p in model.parameters())
    routed = sum(p.numel() for n, p in model.named_parameters() if ".mlp.experts." in n)
    right = (total - routed + routed * 2 / 8) / total
    assert nb01.check_active_share(right, model)
    assert not nb01.check_active_share(1.0, model)


def test_v2_lite_exercise():
    right = ["q_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert nb01.check_v2_lite_targets(list(reversed(right)))
    assert not nb01.check_v2_lite_targets(["q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"])

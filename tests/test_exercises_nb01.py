"""Notebook 01's exercise checks accept right answers and reject wrong ones, including the figures the
notebook prints for DeepSeek-V3 and the tiny model."""

from __future__ import annotations

import pytest
from transformers import DeepseekV3Config

from dsnb.exercises import nb01
from dsnb.model.architecture import kv_cache_per_token


def test_cache_exercise(capsys):
    right = (512 + 64) * 27 * 2 * 65_536 / 2**30  # V2-Lite: latent 512 + rope 64 per layer, 27 layers, bf16
    assert nb01.check_cache_gib(right)
    assert not nb01.check_cache_gib(right * 2)  # fp32
    mha = kv_cache_per_token(nb01.load_model_config("deepseek-v2-lite")["config"])["MHA bytes per token (all layers)"]
    assert not nb01.check_cache_gib(mha * 65_536 / 2**30)  # the MHA-sized answer
    v3 = kv_cache_per_token(DeepseekV3Config())["cache bytes per token (all layers)"] * 65_536 / 2**30
    assert not nb01.check_cache_gib(v3)  # V3's shape, printed in the notebook
    assert not nb01.check_cache_gib(None)
    assert "not answered yet" in capsys.readouterr().out


def test_active_share_exercise():
    active, total = nb01.active_parameters()
    assert 15.6e9 < total < 15.8e9 and 2.3e9 < active < 2.5e9  # the model card: 15.7 B total, 2.4 B active
    assert nb01.check_active_share(active / total)
    whole_embedding = (active + 102_400 * 2048 - 2048) / total
    assert not nb01.check_active_share(whole_embedding)  # counts the whole embedding matrix
    assert not nb01.check_active_share(1.0)
    assert not nb01.check_active_share(6 / 64)


def test_v2_lite_exercise():
    right = ["q_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert nb01.check_v2_lite_targets(list(reversed(right)))
    assert nb01.check_v2_lite_targets(", ".join(x.upper() for x in right))
    assert not nb01.check_v2_lite_targets(["q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"])
    assert not nb01.check_v2_lite_targets(right[:-1])


def test_solutions(capsys):
    for n in (1, 2, 3):
        nb01.solution(n)
    out = capsys.readouterr().out
    assert f"{nb01.expected_cache_gib():.2f} GiB" in out and "q_proj" in out
    with pytest.raises(ValueError):
        nb01.solution(0)

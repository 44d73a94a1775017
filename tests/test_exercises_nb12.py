"""Notebook 12's exercise checks accept right answers and reject wrong ones."""

from __future__ import annotations

import ast
import math

import pytest

from dsnb.exercises import accepted_answers, nb12
from dsnb.plan.memory import GiB
from dsnb.plan.shape import load_model_config


def test_group_advantage(capsys):
    mean, std = 1 / 8, math.sqrt(8 / 7 * (1 / 8) * (7 / 8))
    right = (1 - mean) / (std + 1e-4)
    assert abs(nb12.expected_advantage() - right) < 1e-5
    assert nb12.check_group_advantage(right)
    assert not nb12.check_group_advantage((1 - mean) / math.sqrt((1 / 8) * (7 / 8)))  # without Bessel's correction
    assert not nb12.check_group_advantage(1.5)  # the notebook's group of 4
    assert not nb12.check_group_advantage(1 - mean)  # not divided by the std
    assert not nb12.check_group_advantage(None)
    assert "Hint" in capsys.readouterr().out


def _naive(prompts, completions, **kwargs):
    return [float("return" in c) if isinstance(c, str) else 0.0 for c in completions]


def _raises(prompts, completions, **kwargs):
    return [float(isinstance(ast.parse(c).body[0], ast.Return)) for c in completions]


def test_reward(capsys):
    assert nb12.check_reward(nb12.returns_a_value)
    assert not nb12.check_reward(_naive)  # counts comments, bare returns, 'returns = ' and code after the function
    assert "scored differently" in capsys.readouterr().out
    assert not nb12.check_reward(_raises)  # raises on what the model writes
    assert "it raised" in capsys.readouterr().out
    assert not nb12.check_reward(lambda p, c: [1.0])  # one score for many completions
    assert not nb12.check_reward("return")
    assert not nb12.check_reward(None)
    scores = nb12.returns_a_value([nb12.EX2_HEAD] * len(nb12.EX2_CASES), list(nb12.EX2_CASES))
    assert scores == [1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]


def test_kv_cache():
    c = load_model_config(nb12.EX3_MODEL)["config"]
    per_token = (c["kv_lora_rank"] + c["qk_rope_head_dim"]) * c["num_hidden_layers"] * 2
    right = 16 * 8 * (256 + 1024) * per_token / GiB
    assert abs(nb12.expected_kv_gib() - right) < 1e-9
    assert nb12.check_kv_cache(right)
    assert not nb12.check_kv_cache(right * 2)  # fp32
    assert not nb12.check_kv_cache(right * 1024 / 1280)  # the completion only, not the prompt
    assert not nb12.check_kv_cache(right / 8)  # one completion per prompt


def test_every_check_records_one_answer():
    found = accepted_answers(nb12)
    assert [a.check for a in found] == ["check_group_advantage", "check_kv_cache", "check_reward"]


def test_solutions(capsys):
    for n in (1, 2, 3):
        nb12.solution(n)
    out = capsys.readouterr().out
    assert "Bessel" in out and "returns_something" in out and "GiB" in out
    with pytest.raises(ValueError):
        nb12.solution(4)

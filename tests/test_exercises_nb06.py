"""Notebook 06's exercise checks accept right answers and reject wrong ones; the worked solutions print."""

from __future__ import annotations

import math

from dsnb.exercises import nb06
from dsnb.plan.memory import GiB
from dsnb.plan.shape import as_shape


def test_pair_loss_by_hand(capsys):
    right = math.log(1 + math.exp(-0.3 * 3.3))  # h = 2.5 + 0.8, β = 0.3
    assert abs(nb06.expected_loss() - right) < 1e-6
    assert nb06.check_pair_loss(right)
    assert not nb06.check_pair_loss(math.log(1 + math.exp(-0.3 * 1.7)))  # h = 2.5 − 0.8: sign slip
    assert not nb06.check_pair_loss(math.log(2))  # the loss at the reference
    assert not nb06.check_pair_loss(None)
    assert "Hint" in capsys.readouterr().out


def test_ipo_beta_for_a_target_gap():
    assert abs(nb06.ipo_target_gap(0.25) - 2.0) < 1e-3  # the target is 1 / (2β)
    assert abs(nb06.expected_ipo_beta() - 1 / 24) < 1e-5
    assert nb06.check_ipo_beta(1 / 24)
    assert not nb06.check_ipo_beta(1 / 12)  # 1/h, the factor 2 forgotten
    assert not nb06.check_ipo_beta(0.1)  # the notebook's β


def test_reference_memory_counts_every_expert_and_shards():
    params = as_shape(nb06.EX3_MODEL).parameter_count()
    assert params > 15e9  # all experts: DeepSeek-V2-Lite has about 16 B parameters, 2.4 B of them active per token
    right = params * 2 / GiB / 4
    assert abs(nb06.expected_reference_gib() - right) < 1e-9
    assert nb06.check_reference_memory(right)
    assert not nb06.check_reference_memory(right * 4)  # not sharded
    assert not nb06.check_reference_memory(2.4e9 * 2 / GiB / 4)  # active parameters only
    assert not nb06.check_reference_memory(right * 2)  # fp32


def test_solutions(capsys):
    for n in (1, 2, 3):
        nb06.solution(n)
    out = capsys.readouterr().out
    assert "0.3160" in out and "0.04167" in out and "GiB per GPU" in out

"""Notebook 06's exercise checks accept right answers and reject wrong ones."""

from __future__ import annotations

import math

from dsnb.exercises import nb06
from dsnb.plan.memory import GiB
from dsnb.plan.shape import as_shape


def test_pair_loss_by_hand(capsys):
    right = math.log(1 + math.exp(-0.5 * 3.0))  # h = 2 + 1 = 3, β = 0.5
    assert abs(nb06.expected_loss() - right) < 1e-6
    assert nb06.check_pair_loss(right)
    assert not nb06.check_pair_loss(math.log(1 + math.exp(-0.5 * 1.0)))  # h = 2 − 1: sign slip
    assert not nb06.check_pair_loss(math.log(2))  # the loss at the reference
    assert not nb06.check_pair_loss(None)
    assert "Hint" in capsys.readouterr().out


def test_ipo_target():
    assert abs(nb06.expected_ipo_target() - 2.0) < 1e-3  # 1 / (2 × 0.25)
    assert nb06.check_ipo_target(2.0)
    assert not nb06.check_ipo_target(5.0)  # the notebook's β = 0.1


def test_reference_memory():
    params = as_shape(nb06.EX3_MODEL).parameter_count()
    right = params * 2 / GiB
    assert 11 < right < 14  # about 6.7 billion parameters in bf16
    assert nb06.check_reference_memory(right)
    assert not nb06.check_reference_memory(right * 2)  # fp32, or counted twice
    assert not nb06.check_reference_memory(right * 8)  # as if it were trained with AdamW

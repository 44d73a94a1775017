"""Notebook 04's exercise checks accept right answers and reject wrong ones."""

from __future__ import annotations

import math

import pytest

from dsnb.exercises import nb04


def test_t2_kl(capsys):
    p = [math.exp(x / 2) for x in (2.0, 0.0, -2.0)]
    p = [x / sum(p) for x in p]
    right = 4 * sum(pi * math.log(pi * 3) for pi in p)  # the student is uniform: q = 1/3
    assert nb04.check_t2_kl(right)
    assert not nb04.check_t2_kl(right / 4)  # forgot T²
    assert not nb04.check_t2_kl(None)
    assert "Hint" in capsys.readouterr().out


def test_masked_batchmean_factor():
    assert nb04.check_masked_batchmean_factor(250)  # (512 + 300 + 128 + 60) / 4
    assert not nb04.check_masked_batchmean_factor(512)  # the padded length: what unmasked batchmean gives
    assert not nb04.check_masked_batchmean_factor(4)  # the batch size
    assert math.isclose(nb04.masked_batchmean_factor((5, 3), 5), 4, rel_tol=1e-5)


def test_topk_storage():
    assert nb04.check_topk_storage_gb(50 * (1 + 4) * 3e9 / 1e9)  # fp8 values + int32 ids
    assert not nb04.check_topk_storage_gb(50 * (2 + 4) * 3e9 / 1e9)  # bf16 values, as on the page
    assert not nb04.check_topk_storage_gb(50 * 1 * 3e9 / 1e9)  # values only


def test_solutions(capsys):
    for n in (1, 2, 3):
        nb04.solution(n)
    out = capsys.readouterr().out
    assert f"{nb04.t2_kl((2.0, 0.0, -2.0), (0.0, 0.0, 0.0), 2.0):.4f}" in out and f"{nb04.topk_storage_gb():,.0f} GB" in out
    with pytest.raises(ValueError):
        nb04.solution(4)

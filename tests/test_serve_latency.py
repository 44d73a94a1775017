"""Latency percentiles and the bandwidth-bound estimate for a real model on a named GPU."""

from __future__ import annotations

import pytest

from dsnb.serve.latency import estimate_response_seconds, percentiles


def test_percentiles():
    xs = list(range(1, 101))
    assert percentiles(xs) == {"p50": pytest.approx(50.5), "p99": pytest.approx(99.01)}
    with pytest.raises(ValueError):
        percentiles([])


def test_dense_model_decode_is_weights_over_bandwidth():
    est = estimate_response_seconds("deepseek-coder-6.7b-base", "H100 80GB", answer_tokens=100, prompt_tokens=200)
    n = est["active parameters"]
    assert n == pytest.approx(6.74e9, rel=0.01)  # the published 6.7 B
    assert est["seconds per token"] == pytest.approx(n * 2 / (3.35e12 * 0.75))
    assert est["response seconds"] == pytest.approx(est["prefill seconds"] + 100 * est["seconds per token"])


def test_moe_reads_only_active_experts():
    v3 = estimate_response_seconds("deepseek-v3", "H200", bytes_per_param=1, gpus=8)
    assert 36e9 < v3["active parameters"] < 39e9  # DeepSeek-V3: 37 B activated of 671 B
    with pytest.raises(ValueError, match="unknown GPU"):
        estimate_response_seconds("deepseek-v3", "TPU")

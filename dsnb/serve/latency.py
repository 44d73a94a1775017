"""Response latency: percentiles of measured times, and an estimate for a real model on a named GPU (notebook 10).

Generating one token at batch size 1 reads every active weight once from GPU memory, so decoding is
bound by memory bandwidth: seconds per token ≈ active parameters × bytes per parameter / (bandwidth ×
efficiency). Reading the prompt (prefill) is bound by compute: 2 × active parameters × prompt tokens /
(bf16 FLOP/s × utilisation). ``estimate_response_seconds`` adds the two for a model from
``configs/models`` (through ``dsnb.plan.shape``) on a GPU of ``GPU_SPECS``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dsnb.plan.shape import ModelShape, load_model_config


@dataclass(frozen=True)
class GPUThroughput:
    """A GPU's peak memory bandwidth (bytes/s) and dense bf16 tensor throughput (FLOP/s), from its data sheet."""

    name: str
    bandwidth: float
    bf16_flops: float


#: Vendor data-sheet figures (SXM versions of the data-centre cards; dense, no sparsity).
GPU_SPECS: dict[str, GPUThroughput] = {
    "RTX 4090": GPUThroughput("RTX 4090", 1.008e12, 165e12),
    "A100 80GB": GPUThroughput("A100 80GB", 2.039e12, 312e12),
    "H100 80GB": GPUThroughput("H100 80GB", 3.35e12, 989e12),
    "H200": GPUThroughput("H200", 4.8e12, 989e12),
}


def percentiles(seconds: Sequence[float], qs: Sequence[float] = (50, 99)) -> dict[str, float]:
    """``{"p50": ..., "p99": ...}`` of ``seconds`` (linear interpolation, as numpy does)."""
    if len(seconds) == 0:
        raise ValueError("no latencies to summarise")
    return {f"p{q:g}": float(np.percentile(np.asarray(seconds, dtype=float), q)) for q in qs}


def estimate_response_seconds(model: str | dict[str, Any] | ModelShape, gpu: str = "H100 80GB",
                              answer_tokens: int = 100, prompt_tokens: int = 200, bytes_per_param: float = 2.0,
                              gpus: int = 1, bandwidth_efficiency: float = 0.75,
                              flops_utilisation: float = 0.5) -> dict[str, float]:
    """Seconds to answer one request at batch size 1: prefill (compute-bound) + decode (bandwidth-bound).

    ``model``: a ``configs/models`` name, a config dict or a ``ModelShape``; ``gpus`` splits the
    weights (tensor parallel; communication not counted, so more GPUs is optimistic).
    """
    if gpu not in GPU_SPECS:
        raise ValueError(f"unknown GPU {gpu!r}; choose from {sorted(GPU_SPECS)}")
    if isinstance(model, str):
        model = load_model_config(model)
    shape = model if isinstance(model, ModelShape) else ModelShape.from_config(model)
    spec = GPU_SPECS[gpu]
    active = shape.active_parameter_count()
    per_token = active * bytes_per_param / (spec.bandwidth * gpus * bandwidth_efficiency)
    prefill = 2 * active * prompt_tokens / (spec.bf16_flops * gpus * flops_utilisation)
    return {"active parameters": float(active), "seconds per token": per_token, "prefill seconds": prefill,
            "response seconds": prefill + answer_tokens * per_token,
            "tokens in 0.8 s": max(0.0, (0.8 - prefill) / per_token)}

"""Magnitude pruning with ``torch.nn.utils.prune``: the |w| < threshold rule, target sparsity, 2:4. Notebook 09.

The prunable weights are those ``quantize_model`` would quantize (every ``nn.Linear`` of the decoder
layers except routers, and the fused routed experts' 3-D weights); embeddings, norms, routers and
the LM head are left alone. ``prune.remove`` makes the zeros permanent. Zeros in a dense tensor do not
make a dense matmul faster: only a sparse storage format (``sparse_bytes``) or sparse kernels (2:4 on
NVIDIA Ampere and newer) turn them into savings.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import prune

from dsnb.compress.quantize import decoder_layers, is_fused_experts, quantizable_units


def prunable(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """``(module, parameter name)`` of every prunable weight of ``model``."""
    out = []
    for layer in decoder_layers(model):
        for unit in quantizable_units(layer):
            mod_name, _, pname = unit.rpartition(".")
            parent = layer.get_submodule(mod_name) if mod_name else layer
            if pname in ("gate_up_proj", "down_proj") and is_fused_experts(parent):
                out.append((parent, pname))
            else:
                out.append((layer.get_submodule(unit), "weight"))
    return out


def _weights(model: nn.Module) -> list[torch.Tensor]:
    return [getattr(m, n).detach() for m, n in prunable(model)]


def share_below(model: nn.Module, threshold: float = 0.01, which: str = "prunable") -> float:
    """Share of weights with ``|w| < threshold``: over the prunable weights, or ``which="all"`` parameters."""
    tensors = _weights(model) if which == "prunable" else [p.detach() for p in model.parameters()]
    if which not in ("prunable", "all"):
        raise ValueError(f"which={which!r}: use 'prunable' or 'all'")
    below = sum(int((t.abs() < threshold).sum()) for t in tensors)
    return below / sum(t.numel() for t in tensors)


def gaussian_share_below(threshold: float, std: float) -> float:
    """Share of a zero-mean Gaussian with standard deviation ``std`` inside ``(-threshold, threshold)``."""
    return math.erf(threshold / (std * math.sqrt(2)))


def prune_threshold(model: nn.Module, threshold: float = 0.01) -> float:
    """Zero every prunable weight with ``|w| < threshold`` (``prune.custom_from_mask``); returns the sparsity."""
    for module, name in prunable(model):
        prune.custom_from_mask(module, name, (getattr(module, name).detach().abs() >= threshold))
    return sparsity(model)


def prune_global(model: nn.Module, amount: float) -> float:
    """Global unstructured L1 pruning: the ``amount`` smallest-magnitude prunable weights, across all layers."""
    if not 0 <= amount < 1:
        raise ValueError(f"amount={amount}: use a share in [0, 1)")
    prune.global_unstructured(prunable(model), pruning_method=prune.L1Unstructured, amount=amount)
    return sparsity(model)


def two_four_mask(weight: torch.Tensor) -> torch.Tensor:
    """2:4 semi-structured mask: in every run of 4 consecutive input weights keep the 2 largest |w|."""
    if weight.shape[-1] % 4:
        raise ValueError(f"2:4 sparsity needs the input dimension to be a multiple of 4, got {weight.shape[-1]}")
    groups = weight.detach().abs().reshape(*weight.shape[:-1], -1, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(-1, groups.topk(2, dim=-1).indices, True)
    return keep.reshape(weight.shape)


def prune_two_four(model: nn.Module) -> float:
    """2:4 semi-structured pruning of every prunable weight (50% sparsity, the pattern sparse tensor cores run)."""
    for module, name in prunable(model):
        prune.custom_from_mask(module, name, two_four_mask(getattr(module, name)))
    return sparsity(model)


def make_permanent(model: nn.Module) -> None:
    """``prune.remove`` on every pruned weight: the zeros stay, the mask and the original copy go."""
    for module, name in prunable(model):
        if prune.is_pruned(module) and hasattr(module, name + "_mask"):
            prune.remove(module, name)


def sparsity(model: nn.Module) -> float:
    """Share of zeros among the prunable weights."""
    tensors = _weights(model)
    return sum(int((t == 0).sum()) for t in tensors) / sum(t.numel() for t in tensors)


def sparse_bytes(model: nn.Module, value_bytes: int = 2) -> dict[str, int]:
    """Bytes of the prunable weights stored dense, as CSR (int32 indices) and as a bitmask + non-zero values.

    ``value_bytes`` is the size of one stored value (2 for bf16/fp16).
    """
    dense = csr = bitmask = 0
    for t in _weights(model):
        rows = t.numel() // t.shape[-1]
        nnz = int((t != 0).sum())
        dense += t.numel() * value_bytes
        csr += nnz * (value_bytes + 4) + (rows + 1) * 4
        bitmask += nnz * value_bytes + (t.numel() + 7) // 8
    return {"dense": dense, "csr": csr, "bitmask": bitmask}

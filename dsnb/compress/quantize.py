"""Quantize a whole causal LM layer by layer (GPTQ or RTN), over every routed expert. Notebook 09.

``quantize_model`` walks the decoder layers in order. Each layer sees the hidden states that the
already-quantized layers before it produce, and inside a layer the weights are quantized in the order
the forward pass uses them (MLA's ``q_a_proj`` and ``kv_a_proj_with_mqa`` first, then ``q_b_proj``,
``kv_b_proj``, ``o_proj``; the MLP's gate / up, then down), each calibrated on the inputs produced by
the parts already quantized. Modules that read the same input tensor are one step. The structure is
read from the model: every ``nn.Linear`` inside a decoder layer except routers (``gate``/``router``),
and transformers 5's fused routed experts (a module with 3-D ``gate_up_proj`` and ``down_proj``),
whose every expert is quantized with the Hessian of the tokens the router sent to it. An expert that
received no calibration tokens falls back to RTN and is listed in ``result.fallback``. Embeddings,
norms, routers and the LM head stay in full precision.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from dsnb.compress.gptq import QuantizedWeight, gptq_quantize_weight, rtn_quantize_weight
from dsnb.model.device import model_device

logger = logging.getLogger(__name__)

ROUTER_NAMES = ("gate", "router")


@dataclass
class QuantizationResult:
    """What ``quantize_model`` did: the quantized weights, one row per weight, RTN fallbacks, time."""

    method: str
    bits: int
    group_size: int
    weights: dict[str, QuantizedWeight] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    fallback: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        n_exp = sum(q.codes.shape[0] for q in self.weights.values() if q.codes.dim() == 3)
        return (f"{self.method} {self.bits}-bit g{self.group_size}: {len(self.weights)} weights ({n_exp} routed-expert "
                f"slices), {len(self.fallback)} RTN fallbacks, {self.seconds:.1f} s")


def is_fused_experts(module: nn.Module) -> bool:
    """transformers 5's fused routed experts: 3-D ``gate_up_proj`` (E, 2·inter, hidden) and ``down_proj`` (E, hidden, inter)."""
    gu, down = getattr(module, "gate_up_proj", None), getattr(module, "down_proj", None)
    return isinstance(gu, torch.Tensor) and isinstance(down, torch.Tensor) and gu.dim() == 3 and down.dim() == 3


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's list of decoder layers (the ``nn.ModuleList`` with ``config.num_hidden_layers`` entries)."""
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for _, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) == n:
            return mod
    raise ValueError("could not find the decoder layers (an nn.ModuleList of config.num_hidden_layers modules)")


def quantizable_units(layer: nn.Module) -> list[str]:
    """Names (relative to ``layer``) of the weights ``quantize_model`` quantizes in one decoder layer."""
    units = []
    for name, mod in layer.named_modules():
        if isinstance(mod, nn.Linear) and name.rsplit(".", 1)[-1] not in ROUTER_NAMES:
            units.append(name)
        elif is_fused_experts(mod):
            if mod.gate_up_proj.shape[-1] != mod.down_proj.shape[-2]:
                raise ValueError(f"{name}: expected gate_up_proj (E, 2·inter, hidden) and down_proj (E, hidden, inter), "
                                 f"got {tuple(mod.gate_up_proj.shape)} and {tuple(mod.down_proj.shape)}")
            units += [f"{name}.gate_up_proj", f"{name}.down_proj"]
    return units


def _kind(name: str) -> str:
    if "shared_expert" in name:
        return "shared expert"
    if "experts.gate_up_proj" in name or "experts.down_proj" in name:
        return "routed experts"
    if "attn" in name or "attention" in name:
        return "attention"
    return "dense MLP"


class _Stop(Exception):
    pass


def _layer_inputs(model: nn.Module, layers: nn.ModuleList, blocks: torch.Tensor, batch_size: int
                  ) -> list[tuple[tuple, dict]]:
    """The first decoder layer's (args, kwargs) for each calibration batch."""
    captured: list[tuple[tuple, dict]] = []

    def grab(_m, args, kwargs):
        captured.append((args, kwargs))
        raise _Stop

    handle = layers[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        for i in range(0, blocks.shape[0], batch_size):
            try:
                model(input_ids=blocks[i:i + batch_size].to(model_device(model)), use_cache=False)
            except _Stop:
                pass
    finally:
        handle.remove()
    return captured


class _Stats:
    """Running ``XᵀX`` (float64) and row count of one weight's inputs (per expert for fused experts)."""

    def __init__(self, columns: int, experts: int = 0):
        self.xtx = torch.zeros(*((experts,) if experts else ()), columns, columns, dtype=torch.float64)
        self.n = torch.zeros(max(experts, 1), dtype=torch.long)

    def add(self, x: torch.Tensor, e: int | None = None) -> None:
        x = x.reshape(-1, x.shape[-1]).double()
        if e is None:
            self.xtx += x.T @ x
            self.n[0] += x.shape[0]
        else:
            self.xtx[e] += x.T @ x
            self.n[e] += x.shape[0]


def _quantize(w: torch.Tensor, st_xtx: torch.Tensor, n: int, method: str, bits: int, group_size: int, damp: float,
              act_order: bool) -> tuple[QuantizedWeight, dict[str, float]]:
    """Quantize one 2-D weight; relative output errors of GPTQ's and RTN's result on these inputs."""
    rtn = rtn_quantize_weight(w, bits, group_size)
    q = rtn if method == "rtn" or n == 0 else gptq_quantize_weight(w, 2 * st_xtx / n, bits, group_size, damp,
                                                                    act_order, is_hessian=True)
    wd = w.double()
    ref = torch.einsum("oi,ij,oj->", wd, st_xtx, wd).item()
    err = {}
    for key, qq in (("error", q), ("rtn error", rtn)):
        d = wd - qq.dequantize().double()
        err[key] = torch.einsum("oi,ij,oj->", d, st_xtx, d).item()
    err["reference"] = ref
    return q, err


def quantize_model(model: nn.Module, calibration: torch.Tensor | list[str] | None, method: str = "gptq", bits: int = 4,
                   group_size: int = 128, damp: float = 0.01, act_order: bool = False,
                   tokenizer: PreTrainedTokenizerBase | None = None, seq_len: int = 128, batch_size: int = 16,
                   ) -> QuantizationResult:
    """Quantize ``model``'s decoder-layer weights in place (their values become the dequantized grid values).

    ``calibration`` is a ``(blocks, seq)`` tensor of token ids, or texts packed into ``seq_len`` blocks with
    ``tokenizer``; it may be ``None`` for ``method="rtn"`` (no per-weight errors then). Returns the quantized
    weights (for ``dsnb.compress.qlinear.pack_model``), a row per weight (layer, module, kind, experts,
    calibration tokens, GPTQ's and RTN's relative output error ``‖ΔW X‖² / ‖W X‖²``) and the RTN fallbacks.
    """
    if method not in ("gptq", "rtn"):
        raise ValueError(f"method={method!r}: use 'gptq' or 'rtn'")
    if isinstance(calibration, list):
        if tokenizer is None:
            raise ValueError("calibration texts need the tokenizer= to pack them into blocks")
        from dsnb.model.pretrain import pack_texts
        calibration = pack_texts(calibration, tokenizer, seq_len)
    if calibration is None and method == "gptq":
        raise ValueError("GPTQ needs calibration data: a (blocks, seq) tensor of token ids or a list of texts")
    t0 = time.perf_counter()
    result = QuantizationResult(method, bits, group_size)
    layers = decoder_layers(model)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        if calibration is None:
            for li, layer in enumerate(layers):
                for unit in quantizable_units(layer):
                    _rtn_unit(layer, unit, f"{_prefix(model, layers)}{li}.{unit}", bits, group_size, result)
        else:
            inputs = _layer_inputs(model, layers, calibration, batch_size)
            for li, layer in enumerate(layers):
                _quantize_layer(layer, li, f"{_prefix(model, layers)}{li}.", inputs, method, bits, group_size, damp,
                                act_order, result)
                inputs = [((layer(*a, **k),) + a[1:], k) for a, k in inputs]  # outputs of the quantized layer
    model.train(was_training)
    result.seconds = time.perf_counter() - t0
    logger.info(result.summary())
    if result.fallback:
        logger.warning("%d routed experts saw no calibration tokens and were RTN-quantized: %s",
                       len(result.fallback), ", ".join(result.fallback))
    return result


def _prefix(model: nn.Module, layers: nn.ModuleList) -> str:
    return next(n for n, m in model.named_modules() if m is layers) + "."


def _rtn_unit(layer: nn.Module, unit: str, full: str, bits: int, group_size: int, result: QuantizationResult) -> None:
    mod_name, _, pname = unit.rpartition(".")
    if pname in ("gate_up_proj", "down_proj") and is_fused_experts(layer.get_submodule(mod_name)):
        p = getattr(layer.get_submodule(mod_name), pname)
        qs = [rtn_quantize_weight(p[e], bits, group_size) for e in range(p.shape[0])]
        q = _stack(qs)
    else:
        p = layer.get_submodule(unit).weight
        q = rtn_quantize_weight(p, bits, group_size)
    p.data.copy_(q.dequantize(p.dtype))
    result.weights[full] = q


def _stack(qs: list[QuantizedWeight]) -> QuantizedWeight:
    return QuantizedWeight(torch.stack([q.codes for q in qs]), torch.stack([q.scale for q in qs]),
                           torch.stack([q.zero for q in qs]), qs[0].bits, qs[0].group_size)


def _quantize_layer(layer: nn.Module, li: int, prefix: str, inputs: list[tuple[tuple, dict]], method: str, bits: int,
                    group_size: int, damp: float, act_order: bool, result: QuantizationResult) -> None:
    pending = quantizable_units(layer)
    while pending:
        stats, order, first = _collect(layer, pending, inputs)
        called = [u for u in order if u in pending]
        if not called:
            logger.warning("layer %d: %s never ran on the calibration data; left in full precision", li, pending)
            break
        step = [u for u in called if first[u] == first[called[0]]]  # everything reading the same tensor
        for unit in step:
            _quantize_unit(layer, unit, prefix, li, stats[unit], method, bits, group_size, damp, act_order, result)
            pending.remove(unit)


def _collect(layer: nn.Module, pending: list[str], inputs: list[tuple[tuple, dict]]
             ) -> tuple[dict[str, _Stats], list[str], dict[str, tuple]]:
    """Run ``layer`` over the calibration inputs; ``XᵀX`` of every pending weight's input, call order, input identity."""
    stats: dict[str, _Stats] = {}
    order: list[str] = []
    first: dict[str, tuple] = {}
    keep: list[torch.Tensor] = []  # hold the first batch's inputs so their storage is not reused mid-pass

    def seen(unit: str, x: torch.Tensor, ident: tuple | None = None) -> None:
        if unit not in first:
            order.append(unit)
            first[unit] = ident or (x.data_ptr(), x.numel())
            keep.append(x)

    handles = []
    for unit in pending:
        mod_name, _, pname = unit.rpartition(".")
        parent = layer.get_submodule(mod_name) if mod_name else layer
        if pname in ("gate_up_proj", "down_proj") and is_fused_experts(parent):
            down = f"{mod_name}.down_proj"
            if pname == "down_proj" and f"{mod_name}.gate_up_proj" in pending:
                continue  # collected by the gate_up_proj hook
            gate_up = unit if pname == "gate_up_proj" else None
            e = parent.gate_up_proj.shape[0]
            if gate_up:
                stats[gate_up] = _Stats(parent.gate_up_proj.shape[-1], e)
            stats[down] = _Stats(parent.down_proj.shape[-1], e)
            handles.append(parent.register_forward_pre_hook(_experts_hook(parent, gate_up, mod_name, stats, seen)))
        else:
            mod = layer.get_submodule(unit)
            stats[unit] = _Stats(mod.in_features)

            def hook(_m, args, unit=unit):
                stats[unit].add(args[0])
                seen(unit, args[0])
            handles.append(mod.register_forward_pre_hook(hook))
    try:
        for args, kwargs in inputs:
            layer(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return stats, order, first


def _experts_hook(experts: nn.Module, gate_up_unit: str | None, mod_name: str, stats: dict[str, _Stats], seen):
    """Per-expert inputs of the fused experts: routed tokens for gate_up, ``act(gate)·up`` for down."""
    down_unit = f"{mod_name}.down_proj"

    def hook(_m, args):
        hidden, top_k_index = args[0], args[1]
        if gate_up_unit is not None:
            seen(gate_up_unit, hidden)
        seen(down_unit, hidden, ident=("experts-down", id(experts)))
        for e in range(experts.gate_up_proj.shape[0]):
            tokens = (top_k_index == e).any(dim=-1)
            x = hidden[tokens]
            if gate_up_unit is not None:
                stats[gate_up_unit].add(x, e)
            gate, up = torch.nn.functional.linear(x, experts.gate_up_proj[e]).chunk(2, dim=-1)
            stats[down_unit].add(experts.act_fn(gate) * up, e)
    return hook


def _quantize_unit(layer: nn.Module, unit: str, prefix: str, li: int, st: _Stats, method: str, bits: int,
                   group_size: int, damp: float, act_order: bool, result: QuantizationResult) -> None:
    mod_name, _, pname = unit.rpartition(".")
    parent = layer.get_submodule(mod_name) if mod_name else layer
    t0 = time.perf_counter()
    if pname in ("gate_up_proj", "down_proj") and is_fused_experts(parent):
        p = getattr(parent, pname)
        qs, totals = [], {"error": 0.0, "rtn error": 0.0, "reference": 0.0}
        for e in range(p.shape[0]):
            n = int(st.n[e])
            if n == 0:
                result.fallback.append(f"{prefix}{unit}[{e}]")
            q, err = _quantize(p[e].detach().float(), st.xtx[e], n, method, bits, group_size, damp, act_order)
            qs.append(q)
            totals = {k: totals[k] + err[k] for k in totals}
        q, err, tokens, experts = _stack(qs), totals, int(st.n.sum()), p.shape[0]
    else:
        p = layer.get_submodule(unit).weight
        q, err = _quantize(p.detach().float(), st.xtx, int(st.n[0]), method, bits, group_size, damp, act_order)
        tokens, experts = int(st.n[0]), 0
    p.data.copy_(q.dequantize(p.dtype))
    result.weights[prefix + unit] = q
    ref = max(err["reference"], 1e-30)
    result.rows.append({"layer": li, "module": unit, "kind": _kind(unit), "experts": experts, "tokens": tokens,
                        "error": err["error"] / ref, "rtn error": err["rtn error"] / ref,
                        "seconds": time.perf_counter() - t0})

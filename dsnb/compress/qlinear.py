"""Real low-bit storage: packed integer codes, ``QuantLinear``, ``QuantExperts``, safetensors save / load. Notebook 09.

Codes of ``bits`` bits are packed as a little-endian bit stream along each row (4 bits: two weights
per byte, low nibble first); per-(row, group) scales are fp16 and zero points one byte each.
``QuantLinear`` replaces an ``nn.Linear`` and ``QuantExperts`` replaces transformers 5's fused routed
experts (``mlp.experts.gate_up_proj`` / ``down_proj``); both unpack and dequantize their weight on
every forward (what CPU inference does; GPU kernels such as Marlin fuse this into the matmul).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_model, save_model
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from dsnb.cache import follow_umask
from dsnb.compress.gptq import QuantizedWeight, dequantize_codes
from dsnb.model.load import ModelLoadError, _check_local_files

QUANT_CONFIG = "dsnb_quantization.json"


def packed_length(n: int, bits: int) -> int:
    """Bytes needed for ``n`` codes of ``bits`` bits."""
    return (n * bits + 7) // 8


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes ``(..., n)`` in ``[0, 2**bits)`` into uint8 ``(..., ceil(n·bits/8))``."""
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= 2**bits):
        raise ValueError(f"codes must lie in [0, {2**bits - 1}] for {bits}-bit packing")
    c = codes.to(torch.uint8)
    if bits == 4:
        if c.shape[-1] % 2:
            c = F.pad(c, (0, 1))
        return c[..., 0::2] | (c[..., 1::2] << 4)
    n = c.shape[-1]
    shifts = torch.arange(bits, dtype=torch.uint8)
    stream = ((c.unsqueeze(-1) >> shifts) & 1).flatten(-2)  # bit b of code i at position i·bits + b
    stream = F.pad(stream, (0, packed_length(n, bits) * 8 - stream.shape[-1]))
    return (stream.unflatten(-1, (-1, 8)) << torch.arange(8, dtype=torch.uint8)).sum(-1, dtype=torch.uint8)


def unpack_codes(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of ``pack_codes``: uint8 codes ``(..., n)``."""
    if bits == 4:
        return torch.stack([packed & 15, packed >> 4], dim=-1).flatten(-2)[..., :n]
    stream = ((packed.unsqueeze(-1) >> torch.arange(8, dtype=torch.uint8)) & 1).flatten(-2)[..., : n * bits]
    return (stream.unflatten(-1, (n, bits)) << torch.arange(bits, dtype=torch.uint8)).sum(-1, dtype=torch.uint8)


class _Packed(nn.Module):
    """Buffers of one packed weight (``prefix`` names them) and its dequantization."""

    def _register(self, prefix: str, shape: tuple[int, ...], bits: int, group_size: int) -> None:
        *lead, rows, cols = shape
        groups = (cols + group_size - 1) // group_size
        self.register_buffer(f"{prefix}qweight", torch.zeros(*lead, rows, packed_length(cols, bits), dtype=torch.uint8))
        self.register_buffer(f"{prefix}scales", torch.ones(*lead, rows, groups, dtype=torch.float16))
        self.register_buffer(f"{prefix}qzeros", torch.zeros(*lead, rows, groups, dtype=torch.uint8))

    def _load(self, prefix: str, q: QuantizedWeight) -> None:
        getattr(self, f"{prefix}qweight").copy_(pack_codes(q.codes, q.bits))
        getattr(self, f"{prefix}scales").copy_(q.scale)
        getattr(self, f"{prefix}qzeros").copy_(q.zero)

    def _weight(self, prefix: str, cols: int, index: int | None = None) -> torch.Tensor:
        qw, s, z = (getattr(self, f"{prefix}{k}") for k in ("qweight", "scales", "qzeros"))
        if index is not None:
            qw, s, z = qw[index], s[index], z[index]
        return dequantize_codes(unpack_codes(qw, self.bits, cols), s, z, self.group_size)


class QuantLinear(_Packed):
    """An ``nn.Linear`` whose weight is stored as packed ``bits``-bit codes with fp16 group scales."""

    def __init__(self, in_features: int, out_features: int, bits: int, group_size: int, bias: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features, self.bits, self.group_size = in_features, out_features, bits, group_size
        self._register("", (out_features, in_features), bits, group_size)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    @classmethod
    def from_quantized(cls, q: QuantizedWeight, bias: torch.Tensor | None = None) -> QuantLinear:
        out_f, in_f = q.codes.shape
        m = cls(in_f, out_f, q.bits, q.group_size, bias is not None)
        m._load("", q)
        if bias is not None:
            m.bias.data.copy_(bias.detach())
        return m

    def dequantize(self) -> torch.Tensor:
        """The ``(out, in)`` weight in float32."""
        return self._weight("", self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantize().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, bits={self.bits}, group_size={self.group_size}"


class QuantExperts(_Packed):
    """transformers 5's fused routed experts with both 3-D weights stored packed; same forward as the original."""

    def __init__(self, num_experts: int, hidden: int, intermediate: int, bits: int, group_size: int,
                 act_fn: nn.Module) -> None:
        super().__init__()
        self.num_experts, self.hidden_dim, self.intermediate_dim = num_experts, hidden, intermediate
        self.bits, self.group_size, self.act_fn = bits, group_size, act_fn
        self._register("gate_up_", (num_experts, 2 * intermediate, hidden), bits, group_size)
        self._register("down_", (num_experts, hidden, intermediate), bits, group_size)

    @classmethod
    def from_quantized(cls, experts: nn.Module, gate_up: QuantizedWeight, down: QuantizedWeight) -> QuantExperts:
        e, two_i, h = experts.gate_up_proj.shape
        m = cls(e, h, two_i // 2, gate_up.bits, gate_up.group_size, experts.act_fn)
        m._load("gate_up_", gate_up)
        m._load("down_", down)
        return m

    def expert_weights(self, e: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Dequantized ``(gate_up (2·inter, hidden), down (hidden, inter))`` of expert ``e``."""
        return self._weight("gate_up_", self.hidden_dim, e), self._weight("down_", self.intermediate_dim, e)

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(hidden_states)
        for e in top_k_index.unique().tolist():
            if not 0 <= e < self.num_experts:
                continue
            token_idx, top_k_pos = torch.where(top_k_index == e)
            gate_up, down = (w.to(hidden_states.dtype) for w in self.expert_weights(e))
            gate, up = F.linear(hidden_states[token_idx], gate_up).chunk(2, dim=-1)
            h = F.linear(self.act_fn(gate) * up, down) * top_k_weights[token_idx, top_k_pos, None]
            out.index_add_(0, token_idx, h.to(out.dtype))
        return out


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def pack_model(model: nn.Module, weights: dict[str, QuantizedWeight]) -> nn.Module:
    """Swap every quantized ``nn.Linear`` for a ``QuantLinear`` and every fused-experts module for ``QuantExperts``.

    ``weights`` maps a linear module's name, or ``EXPERTS.gate_up_proj`` / ``EXPERTS.down_proj`` (3-D codes), to
    its ``QuantizedWeight`` (``dsnb.compress.quantize.quantize_model``'s ``result.weights``). In place; returns ``model``.
    """
    layout: dict[str, str] = {}
    for name, q in weights.items():
        parent = name.rsplit(".", 1)[0]
        if name.endswith(".down_proj") and parent + ".gate_up_proj" in weights:
            continue  # packed together with its gate_up_proj
        if name.endswith(".gate_up_proj"):
            experts = model.get_submodule(parent)
            _set_module(model, parent, QuantExperts.from_quantized(experts, q, weights[parent + ".down_proj"]))
            layout[parent] = "experts"
            continue
        lin = model.get_submodule(name)
        if not isinstance(lin, nn.Linear):
            raise ValueError(f"{name} is {type(lin).__name__}, not an nn.Linear or a fused experts weight")
        _set_module(model, name, QuantLinear.from_quantized(q, lin.bias))
        layout[name] = "linear"
    if not weights:
        raise ValueError("no quantized weights to pack")
    q0 = next(iter(weights.values()))
    model._dsnb_quantization = {"bits": q0.bits, "group_size": q0.group_size, "modules": layout}
    return model


def save_quantized(model: PreTrainedModel, directory: str | Path) -> Path:
    """Save a ``pack_model``-ed model: ``model.safetensors``, ``config.json`` and the quantization layout."""
    info = getattr(model, "_dsnb_quantization", None)
    if info is None:
        raise ValueError("the model has no packed quantized modules: run dsnb.compress.qlinear.pack_model first")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(out)
    save_model(model, str(out / "model.safetensors"))
    follow_umask(out / "model.safetensors")
    tmp = out / (QUANT_CONFIG + ".tmp")
    tmp.write_text(json.dumps(info, indent=1))
    tmp.replace(out / QUANT_CONFIG)
    return out / "model.safetensors"


class QuantizedLoadError(ModelLoadError):
    """A checkpoint written by ``save_quantized`` cannot be loaded; the message names the file and the field."""


def _read_layout(file: Path) -> dict:
    """The quantization layout of ``file`` (``bits``, ``group_size``, ``modules``), every field checked."""
    redo = "re-save the model with dsnb.compress.qlinear.save_quantized"
    try:
        info = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise QuantizedLoadError(f"{file} is not valid JSON ({exc}); {redo}") from None
    if not isinstance(info, dict):
        raise QuantizedLoadError(f"{file} must hold a JSON object with bits, group_size and modules, not a "
                                 f"{type(info).__name__}; {redo}")
    for key in ("bits", "group_size", "modules"):
        if key not in info:
            raise QuantizedLoadError(f"{file}: missing field {key!r}; {redo}")
    bits, group_size, modules = info["bits"], info["group_size"], info["modules"]
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise QuantizedLoadError(f"{file}: bits={bits!r}: expected a whole number from 1 to 8 (the code width); "
                                 f"{redo}")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise QuantizedLoadError(f"{file}: group_size={group_size!r}: expected a whole number >= 1 (weights per "
                                 f"scale); {redo}")
    if not isinstance(modules, dict) or not modules:
        raise QuantizedLoadError(f"{file}: modules={modules!r:.80}: expected a non-empty mapping of module name to "
                                 f"'linear' or 'experts'; {redo}")
    for name, kind in modules.items():
        if kind not in ("linear", "experts"):
            raise QuantizedLoadError(f"{file}: modules[{name!r}]={kind!r}: expected 'linear' or 'experts'; {redo}")
    return info


def _packed_module(model: nn.Module, name: str, kind: str, bits: int, group_size: int, file: Path) -> nn.Module:
    """The empty packed module that replaces ``name`` (``QuantLinear`` or ``QuantExperts``)."""
    try:
        old = model.get_submodule(name)
    except AttributeError:
        raise QuantizedLoadError(f"{file}: modules[{name!r}]: the model has no such module (config.json describes "
                                 f"a {model.config.model_type!r} model); the layout and config.json come from "
                                 "different models: save them together again") from None
    if kind == "experts":
        if not hasattr(old, "gate_up_proj"):
            raise QuantizedLoadError(f"{file}: modules[{name!r}]='experts' but it is a {type(old).__name__}, not "
                                     "fused routed experts")
        e, two_i, h = old.gate_up_proj.shape
        return QuantExperts(e, h, two_i // 2, bits, group_size, old.act_fn)
    if not isinstance(old, nn.Linear):
        raise QuantizedLoadError(f"{file}: modules[{name!r}]='linear' but it is a {type(old).__name__}, not an "
                                 "nn.Linear")
    return QuantLinear(old.in_features, old.out_features, bits, group_size, old.bias is not None)


def load_quantized(directory: str | Path) -> PreTrainedModel:
    """Rebuild a model saved by ``save_quantized`` (architecture from its config, packed modules from the layout).

    Every file is checked first: ``config.json`` and ``model.safetensors`` as ``dsnb.model.load`` checks
    a checkpoint, the layout field by field, and the loaded tensors for NaN / inf (a NaN scale gives NaN
    logits). Anything wrong raises ``QuantizedLoadError`` naming the file and the field. Notebook 09.
    """
    path = Path(directory)
    layout = path / QUANT_CONFIG
    if not layout.is_file():
        raise FileNotFoundError(f"{path} has no {QUANT_CONFIG}: it was not written by dsnb.compress.qlinear.save_quantized")
    info = _read_layout(layout)
    weights = path / "model.safetensors"
    for needed in (path / "config.json", weights):
        if not needed.is_file():
            raise QuantizedLoadError(f"{needed} is missing: copy the whole directory save_quantized wrote")
    try:
        _check_local_files(path)
    except ModelLoadError as exc:
        raise QuantizedLoadError(str(exc)) from None
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
    bits, gs = info["bits"], info["group_size"]
    for name, kind in info["modules"].items():
        _set_module(model, name, _packed_module(model, name, kind, bits, gs, layout))
    try:
        load_model(model, str(weights), strict=True)
    except RuntimeError as exc:
        raise QuantizedLoadError(f"{weights} does not match {QUANT_CONFIG} and config.json ({exc}); save them "
                                 "together again with save_quantized") from None
    with safe_open(str(weights), framework="pt") as f:
        stored = set(f.keys())
    for name, tensor in model.state_dict().items():
        if name in stored and tensor.is_floating_point() and not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise QuantizedLoadError(f"{weights}: {name} holds {bad} NaN or infinite value{'s' if bad > 1 else ''}: "
                                     "the model would give NaN logits; quantize and save it again")
    model._dsnb_quantization = info
    return model.eval()


def bytes_per_weight(bits: int, group_size: int, scale_bytes: int = 2, zero_bytes: int = 1) -> float:
    """Stored bytes per weight: ``bits/8`` for the code plus one scale and one zero point per ``group_size`` weights."""
    return bits / 8 + (scale_bytes + zero_bytes) / group_size

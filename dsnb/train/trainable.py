"""Fitting a loaded model for training: dropout, LoRA or full, frozen layers, ZeRO-3 MoE leaves.

``prepare_model`` applies a ``FinetuneConfig``: dropout override, LoRA (``dsnb.model.lora``:
attention, dense MLP and shared experts; routed experts with ``lora_experts``) or full training,
freezing the embeddings and first N decoder layers (claim C18), and marking MoE blocks as ZeRO-3
leaf modules when DeepSpeed ZeRO-3 is active; it reports the trainable parameters.

Taught in notebook 03.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from torch import nn
from transformers import (
    PreTrainedModel,
)
from transformers.integrations import is_deepspeed_zero3_enabled

from dsnb.model.lora import apply_lora, lora_target_parameters
from dsnb.train.config import ConfigError, FinetuneConfig

logger = logging.getLogger(__name__)


_LAYER_RE = re.compile(r"\.layers\.(\d+)\.")


def set_dropout(model: nn.Module, p: float) -> int:
    """Set every dropout probability in ``model`` (config and ``nn.Dropout`` modules) to ``p``.

    Returns how many ``nn.Dropout`` modules were changed. Used by notebook 11's overfitting controls.
    """
    if not 0.0 <= p < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {p}")
    config = getattr(model, "config", None)
    for key in ("attention_dropout", "hidden_dropout", "resid_pdrop", "embd_pdrop", "dropout"):
        if config is not None and hasattr(config, key):
            setattr(config, key, p)
    n = 0
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = p
            n += 1
        elif hasattr(module, "attention_dropout") and isinstance(module.attention_dropout, float):
            module.attention_dropout = p
    return n


def freeze_first_layers(model: nn.Module, n: int) -> list[str]:
    """Freeze the input embeddings and decoder layers ``0..n-1`` (claim C18); return the frozen names.

    The article keeps the base model's first 10 layers when loading official weights; freezing them
    keeps the low-level features and saves their gradients and optimizer states.
    """
    if n <= 0:
        return []
    layers = {int(m.group(1)) for name, _ in model.named_parameters() if (m := _LAYER_RE.search(f".{name}"))}
    if n > len(layers):
        raise ConfigError(f"freeze_first_layers={n} but the model has only {len(layers)} decoder layers")
    frozen = []
    for name, param in model.named_parameters():
        m = _LAYER_RE.search(f".{name}")
        if (m and int(m.group(1)) < n) or "embed_tokens" in name:
            param.requires_grad_(False)
            frozen.append(name)
    return frozen


def moe_block_classes(model: nn.Module) -> list[type]:
    """Classes of the MoE blocks in ``model`` (modules holding both ``experts`` and a router ``gate``)."""
    found: list[type] = []
    for module in model.modules():
        if hasattr(module, "experts") and hasattr(module, "gate") and type(module) not in found:
            found.append(type(module))
    return found


def mark_moe_zero3_leaves(model: nn.Module) -> list[type]:
    """Make every MoE block a ZeRO-3 leaf module (DeepSpeed gathers it whole, so no rank hangs).

    Without this, a rank whose tokens route to no token of some expert never fetches that expert's
    shards and the others wait for it forever. Returns the classes marked.
    """
    classes = moe_block_classes(model)
    if classes:
        from deepspeed.utils import set_z3_leaf_modules

        set_z3_leaf_modules(model, classes)
    return classes


def prepare_model(model: PreTrainedModel, cfg: FinetuneConfig) -> tuple[nn.Module, dict[str, Any]]:
    """Apply the config's model choices (dropout, LoRA, freezing) and return the model and a summary."""
    if cfg.model_type and getattr(model.config, "model_type", None) != cfg.model_type:
        raise ConfigError(
            f"the recipe expects a {cfg.model_type!r} model but {cfg.model!r} is {model.config.model_type!r}; "
            "fix model or model_type in the config"
        )
    if cfg.dropout is not None:
        set_dropout(model, cfg.dropout)
    if is_deepspeed_zero3_enabled():  # set by TrainingArguments(deepspeed=...) or accelerate launch
        logger.info("ZeRO-3: MoE blocks %s marked as leaf modules", mark_moe_zero3_leaves(model))
    if cfg.method == "lora":
        if cfg.lora_experts and not lora_target_parameters(model):
            raise ConfigError("lora_experts: true but the model has no fused routed-expert parameters (a dense "
                              "model?); remove lora_experts from the config")
        model = apply_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                           experts=cfg.lora_experts)
    frozen = freeze_first_layers(model, cfg.freeze_first_layers)
    total, trainable = model.num_parameters(), model.num_parameters(only_trainable=True)
    info = {"method": cfg.method, "total": total, "trainable": trainable, "trainable share": trainable / total,
            "frozen tensors": len(frozen)}
    return model, info

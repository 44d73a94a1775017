"""LoRA adapters on DeepSeek models with peft, targeting what the model really contains.

``lora_config`` builds a ``peft.LoraConfig`` from the module tree (``dsnb.model.lora.lora_target_modules``)
and, optionally, the fused routed-expert tensors (``lora_target_parameters``). ``apply_lora`` and
``load_lora`` wrap ``get_peft_model`` / ``PeftModel.from_pretrained``.

Why the wrappers: with transformers 5, peft (0.21) rewrites every LoRA target whose name ends in
``gate_proj``, ``up_proj`` or ``down_proj`` to the fused routed experts for the MoE families whose
layout changed since transformers 4 (Mixtral, Qwen2-MoE, DeepSeek-V2/V3). That keeps adapters trained
with transformers 4 loadable, but for a config written against transformers 5 names it silently
drops the dense MLP of the first layers and the shared experts (peft issue #3711). The wrappers turn
that rewrite off while our configs — which already use transformers 5 names — are applied or loaded.
Taught in notebook 03 (fine-tuning) and notebook 01 (the module names).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from dsnb.model.experts import num_routed_experts

logger = logging.getLogger(__name__)


@contextmanager
def native_target_names() -> Iterator[None]:
    """Within this block peft applies LoRA targets as written (no transformers-4 name rewrite)."""
    try:
        from peft.utils import transformers_weight_conversion as conversion
    except ImportError:  # a peft without the rewrite: nothing to turn off
        yield
        return
    original = getattr(conversion, "convert_peft_config_for_transformers", None)
    if original is None:
        yield
        return
    conversion.convert_peft_config_for_transformers = lambda *args, **kwargs: None
    try:
        yield
    finally:
        conversion.convert_peft_config_for_transformers = original


def lora_config(
    model: nn.Module, r: int = 8, alpha: int = 16, dropout: float = 0.0, experts: bool = False, **kwargs: Any
) -> LoraConfig:
    """A causal-LM ``LoraConfig`` for ``model``: every attention and MLP projection of its layers.

    ``experts=True`` also adapts the fused routed experts (``target_parameters``); off by default
    because serving engines have limited LoRA support on MoE experts. Extra keyword arguments go
    to ``LoraConfig``.
    """
    if r <= 0:
        raise ValueError(f"LoRA rank r must be positive, got {r}")
    params = lora_target_parameters(model) if experts else []
    if experts and not params:
        logger.warning("experts=True but %s has no fused expert parameters; adapting modules only",
                       type(model).__name__)
    return LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, task_type="CAUSAL_LM",
        target_modules=lora_target_modules(model), target_parameters=params or None, **kwargs,
    )


def apply_lora(model: nn.Module, config: LoraConfig | None = None, **config_kwargs: Any) -> PeftModel:
    """Wrap ``model`` with LoRA adapters (``config`` or ``lora_config(model, **config_kwargs)``)."""
    config = config or lora_config(model, **config_kwargs)
    with native_target_names():
        return get_peft_model(model, config)


def load_lora(model: nn.Module, adapter_dir: str | Path, is_trainable: bool = False) -> PeftModel:
    """Load adapters saved by ``PeftModel.save_pretrained`` onto ``model`` (targets as saved)."""
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter_dir} has no adapter_config.json: pass the directory given to save_pretrained")
    with native_target_names():
        return PeftModel.from_pretrained(model, adapter_dir, is_trainable=is_trainable)


def lora_target_modules(model: nn.Module) -> list[str]:
    """The ``nn.Linear`` module names inside the decoder layers that LoRA should adapt.

    Read from the module tree, so it is right for each architecture: MLA's ``q_a_proj``,
    ``q_b_proj``, ``kv_a_proj_with_mqa``, ``kv_b_proj``, ``o_proj`` in DeepSeek-V3; a plain
    ``q_proj`` in V2-Lite; ``q_proj``/``k_proj``/``v_proj`` in the Llama and Qwen2 models. MoE
    routers are left out (adapting the router changes which experts train); so are ``lm_head``
    and embeddings. Routed experts stored as fused 3-D tensors are not modules: see
    ``lora_target_parameters``. Apply them with ``dsnb.model.lora.apply_lora``: a plain peft
    ``get_peft_model`` rewrites the MLP names on DeepSeek-V2/V3 (see ``dsnb.model.lora``).
    """
    n_experts = num_routed_experts(getattr(model, "config", None))
    names: list[str] = []
    for full, module in model.named_modules():
        if not isinstance(module, nn.Linear) or ".layers." not in f".{full}.":
            continue
        leaf = full.rsplit(".", 1)[-1]
        if n_experts and module.out_features == n_experts and "gate" in leaf:
            continue  # an MoE router implemented as a Linear (e.g. Mixtral, Qwen-MoE)
        if leaf not in names:
            names.append(leaf)
    if not names:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layers under '.layers.' to adapt with LoRA")
    return names


def lora_target_parameters(model: nn.Module) -> list[str]:
    """Names (relative to a decoder layer) of fused routed-expert weights, for peft's ``target_parameters``.

    In transformers 5, DeepSeek's routed experts are 3-D parameters such as
    ``mlp.experts.gate_up_proj`` (experts × 2·inter × hidden), not ``nn.Linear`` modules, so they are
    targeted with ``LoraConfig(target_parameters=[...])``. Empty for dense models.
    """
    names: list[str] = []
    for full, param in model.named_parameters():
        if param.dim() != 3 or ".experts." not in full or ".layers." not in full:
            continue
        rel = full.split(".layers.", 1)[1].split(".", 1)[1]
        if rel not in names:
            names.append(rel)
    return names

"""Reading a model's config: one reader for both forms, and the routed-expert count in every family's spelling.

``config_value`` reads a key from a transformers config object or a ``config.json`` dict alike.
DeepSeek configs say ``n_routed_experts``, Mixtral ``num_local_experts``, Qwen-MoE ``num_experts``;
dense models say none of them (0). Torch-free, so the memory estimator (``dsnb.plan.shape``) reads
configs with it too. Used by notebooks 00 and 01 (through the estimator and ``dsnb.model.architecture``)
and by LoRA target discovery (``dsnb.model.lora``).
"""

from __future__ import annotations

from typing import Any

#: Config keys for the routed-expert count, in the order they are tried.
EXPERT_COUNT_KEYS = ("n_routed_experts", "num_local_experts", "num_experts")


def config_value(config: Any, key: str, default: Any = None) -> Any:
    """``config[key]`` of a dict or ``config.key`` of a config object; ``default`` when absent or None."""
    value = config.get(key) if isinstance(config, dict) else getattr(config, key, None)
    return default if value is None else value


def num_routed_experts(config: Any) -> int:
    """Routed experts per MoE layer in ``config`` (a transformers config or a config.json dict); 0 if dense."""
    for key in EXPERT_COUNT_KEYS:
        if value := config_value(config, key):
            return int(value)
    return 0

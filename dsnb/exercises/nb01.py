"""Exercise checks for notebook 01 (base model: tokenizer, MLA, MoE)."""

from __future__ import annotations

from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, DeepseekV3Config

from dsnb.exercises import check_choice, check_number
from dsnb.model.architecture import kv_cache_per_token, parameter_breakdown
from dsnb.model.load import TINY_ARCHITECTURES
from dsnb.model.lora import lora_target_modules


def expected_v3_cache_gib(context: int = 32_768) -> float:
    """GiB of bf16 MLA cache that the full DeepSeek-V3 holds for one sequence of ``context`` tokens."""
    return kv_cache_per_token(DeepseekV3Config(), bytes_per_element=2)["cache bytes per token (all layers)"] * context / 2**30


def check_v3_cache_gib(answer: float | None, context: int = 32_768) -> bool:
    """Exercise 1: the full DeepSeek-V3's MLA cache, in GiB, for one ``context``-token sequence in bf16."""
    return check_number(
        "1 (DeepSeek-V3 cache)", answer, expected_v3_cache_gib(context),
        hint="kv_cache_per_token(DeepseekV3Config()) gives bytes per token for all layers; "
             "multiply by the context length and divide by 2**30.",
    )


def check_active_share(answer: float | None, model: nn.Module) -> bool:
    """Exercise 2: the share of ``model``'s parameters that one token actually passes through."""
    total = next(r for r in parameter_breakdown(model) if r["component"] == "total")
    return check_number(
        "2 (active share)", answer, total["active per token"] / total["parameters"],
        hint="routed experts count only num_experts_per_tok / n_routed_experts of their parameters.",
    )


def expected_v2_lite_targets() -> list[str]:
    """LoRA targets of a DeepSeek-V2-Lite-shaped model (no query compression)."""
    cfg = AutoConfig.for_model("deepseek_v2", vocab_size=512, **TINY_ARCHITECTURES["deepseek_v2"][1])
    return lora_target_modules(AutoModelForCausalLM.from_config(cfg))


def check_v2_lite_targets(answer: list[str] | None) -> bool:
    """Exercise 3: which attention projections V2-Lite has instead of V3's q_a_proj/q_b_proj."""
    expected = expected_v2_lite_targets()
    return check_choice(
        "3 (V2-Lite LoRA targets)", None if answer is None else sorted(answer), sorted(expected),
        hint="V2-Lite sets q_lora_rank=None: build a tiny one with dsnb.model.load.save_tiny_random "
             "or AutoConfig.for_model and call lora_target_modules on it.",
    )

"""Exercise checks for notebook 08 (memory and speed). Expected values are computed by dsnb."""

from __future__ import annotations

from dsnb.exercises import check_number


def qk_sharing_savings(hidden_size: int, num_layers: int, num_heads: int, num_kv_heads: int) -> int:
    """Parameters saved by tying k_proj to q_proj in every layer of a Llama-style model (0 if impossible)."""
    if num_kv_heads != num_heads:
        return 0
    return hidden_size * hidden_size * num_layers


def check_qk_savings_7b(answer: float | None) -> bool:
    """Exercise 1: parameters saved by Q/K sharing in deepseek-llm-7b (hidden 4096, 30 layers, 32 heads, MHA)."""
    return check_number("1 (Q/K sharing at 7B)", answer, qk_sharing_savings(4096, 30, 32, 32), rel_tol=0.01,
                        hint="k_proj is a hidden x hidden matrix in each layer when there are as many KV heads as heads.")


def check_checkpointing_saving(answer: float | None, without_mb: float, with_mb: float) -> bool:
    """Exercise 2: the share (0-1) of activation memory gradient checkpointing saved in this run."""
    return check_number("2 (checkpointing saving)", answer, 1 - with_mb / without_mb, rel_tol=0.03,
                        hint="1 - (activation MB with checkpointing) / (activation MB without), fp32 rows.")

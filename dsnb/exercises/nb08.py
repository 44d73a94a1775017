"""Exercise checks and worked solutions for notebook 08 (memory and speed).

Expected values are computed by dsnb. The questions carry the notebook's measurements over to real
model shapes, whose figures the notebook does not print.
"""

from __future__ import annotations

from dsnb.exercises import Solutions, check_number
from dsnb.plan.memory import TrainingPlan, estimate_training_memory
from dsnb.plan.shape import load_model_config

SOLUTIONS = Solutions("08")
solution = SOLUTIONS.show

#: Exercise 1: deepseek-llm-7b's shape.
EX1_HIDDEN, EX1_LAYERS, EX1_HEADS, EX1_KV_HEADS = 4096, 30, 32, 32
#: Exercise 2: model and sequence length (notebook 00 prints the 6.7B model's saving; this one is deeper).
EX2_MODEL, EX2_SEQ_LEN = "deepseek-coder-33b-base", 4096


def qk_sharing_savings(hidden_size: int, num_layers: int, num_heads: int, num_kv_heads: int) -> int:
    """Parameters saved by tying k_proj to q_proj in every layer of a Llama-style model (0 if impossible)."""
    if num_kv_heads != num_heads:
        return 0
    return hidden_size * hidden_size * num_layers


def check_qk_savings_7b(answer: float | None) -> bool:
    """Exercise 1: parameters saved by Q/K sharing in deepseek-llm-7b (hidden 4096, 30 layers, 32 heads, MHA)."""
    return check_number("1 (Q/K sharing at 7B)", answer,
                        qk_sharing_savings(EX1_HIDDEN, EX1_LAYERS, EX1_HEADS, EX1_KV_HEADS), rel_tol=0.01,
                        hint="k_proj is a hidden x hidden matrix in each layer when there are as many KV heads as heads.")


@SOLUTIONS.register(1)
def _solution_1() -> str:
    saved = qk_sharing_savings(EX1_HIDDEN, EX1_LAYERS, EX1_HEADS, EX1_KV_HEADS)
    return f"""
With as many key/value heads as heads, k_proj maps hidden → heads × head_dim = {EX1_HIDDEN} → {EX1_HIDDEN}: a
{EX1_HIDDEN} × {EX1_HIDDEN} matrix, the same shape as q_proj, so it can be tied to it. One per layer:
  {EX1_HIDDEN} × {EX1_HIDDEN} × {EX1_LAYERS} = {saved:,} parameters (about {saved / 6.9e9:.1%} of 6.9 B).
With grouped-query attention (fewer KV heads) k_proj is smaller than q_proj and cannot be tied:
qk_sharing_savings(4096, 30, 32, 8) = {qk_sharing_savings(4096, 30, 32, 8)}.
"""


def expected_checkpointing_saving(model: str = EX2_MODEL, seq_len: int = EX2_SEQ_LEN) -> float:
    """Share (0-1) of activation memory gradient checkpointing saves in notebook 00's estimate."""
    plan = TrainingPlan(seq_len=seq_len)
    without = estimate_training_memory(model, plan).activations
    with_ckpt = estimate_training_memory(model, plan, gradient_checkpointing=True).activations
    return 1 - with_ckpt / without


def check_checkpointing_saving(answer: float | None) -> bool:
    """Exercise 2: the estimated activation saving of checkpointing for deepseek-coder-33b at 4096 tokens."""
    return check_number("2 (checkpointing saving at 33B)", answer, expected_checkpointing_saving(), rel_tol=0.01,
                        hint="estimate_training_memory(model, seq_len=..., gradient_checkpointing=...).activations, "
                             "with and without: 1 - with / without.")


@SOLUTIONS.register(2)
def _solution_2() -> str:
    plan = TrainingPlan(seq_len=EX2_SEQ_LEN)
    a = estimate_training_memory(EX2_MODEL, plan).activations / 2**30
    b = estimate_training_memory(EX2_MODEL, plan, gradient_checkpointing=True).activations / 2**30
    layers = load_model_config(EX2_MODEL)["config"]["num_hidden_layers"]
    return f"""
Without checkpointing every layer keeps all its saved tensors until backward; with it, each layer keeps
only its input (batch × seq × hidden in bf16) and one layer is recomputed at a time during backward.
notebook 00's estimator, {EX2_MODEL}, batch 1 × {EX2_SEQ_LEN}, bf16 mixed precision:
  activations without: {a:.2f} GiB, with checkpointing: {b:.2f} GiB (the recomputed layer included)
  saving = 1 − {b:.2f} / {a:.2f} = {1 - b / a:.1%}
The saving grows with depth: this {layers}-layer model keeps {layers} layer inputs + 1 layer instead of {layers} layers
(notebook 00's 32-layer deepseek-coder-6.7b saves {expected_checkpointing_saving("deepseek-coder-6.7b-base"):.1%}). The tiny model in the notebook has only 4 layers,
so the recomputed layer is a large part of what remains.
"""

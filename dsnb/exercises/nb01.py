"""Exercise checks and worked solutions for notebook 01 (base model: tokenizer, MLA, MoE).

The questions move the notebook's computations to DeepSeek-V2-Lite, whose figures the notebook does
not print; every expected value is computed from its published config (``configs/models/``).
"""

from __future__ import annotations

from transformers import AutoConfig, AutoModelForCausalLM

from dsnb.exercises import Solutions, check_choice, check_number, names
from dsnb.model.architecture import kv_cache_per_token
from dsnb.model.load import TINY_ARCHITECTURES
from dsnb.model.lora import lora_target_modules
from dsnb.plan.shape import ModelShape, load_model_config

SOLUTIONS = Solutions("01")
solution = SOLUTIONS.show

#: Exercise 1: the model and context length.
EX1_MODEL, EX1_CONTEXT = "deepseek-v2-lite", 65_536
#: Exercise 2: the model.
EX2_MODEL = "deepseek-v2-lite"


def expected_cache_gib(model: str = EX1_MODEL, context: int = EX1_CONTEXT) -> float:
    """GiB of bf16 attention cache that ``model`` holds for one sequence of ``context`` tokens."""
    per_token = kv_cache_per_token(load_model_config(model)["config"], bytes_per_element=2)
    return per_token["cache bytes per token (all layers)"] * context / 2**30


def check_cache_gib(answer: float | None) -> bool:
    """Exercise 1: DeepSeek-V2-Lite's MLA cache, in GiB, for one 65,536-token sequence in bf16."""
    return check_number(
        "1 (DeepSeek-V2-Lite cache)", answer, expected_cache_gib(),
        hint="per token and layer MLA caches kv_lora_rank + qk_rope_head_dim values (configs/models/"
             "deepseek-v2-lite.yaml); times layers, 2 bytes, the context, then divide by 2**30.",
    )


@SOLUTIONS.register(1)
def _solution_1() -> str:
    c = load_model_config(EX1_MODEL)["config"]
    per = c["kv_lora_rank"] + c["qk_rope_head_dim"]
    mha = kv_cache_per_token(c)["MHA bytes per token (all layers)"] * EX1_CONTEXT / 2**30
    return f"""
MLA caches one latent (kv_lora_rank = {c['kv_lora_rank']}) plus the rotary key part (qk_rope_head_dim =
{c['qk_rope_head_dim']}) per token and layer: {per} values, the same for every head.
  {per} values × {c['num_hidden_layers']} layers × 2 bytes × {EX1_CONTEXT:,} tokens / 2**30 = {expected_cache_gib():.2f} GiB
Multi-head attention of the same shape would cache a key and a value per head: {mha:.1f} GiB.
Computed: kv_cache_per_token(load_model_config("{EX1_MODEL}")["config"])["cache bytes per token (all layers)"]
          × {EX1_CONTEXT:,} / 2**30
"""


def active_parameters(model: str = EX2_MODEL) -> tuple[int, int]:
    """(parameters one token passes through, all parameters) of a published MoE shape.

    A token reads one row of the embedding matrix, the whole output head (every logit is computed),
    ``num_experts_per_tok`` of the routed experts and everything else.
    """
    shape = ModelShape.from_config(load_model_config(model))
    active = shape.active_parameter_count() - shape.vocab_size * shape.hidden_size + shape.hidden_size
    return active, shape.parameter_count()


def check_active_share(answer: float | None) -> bool:
    """Exercise 2: the share of DeepSeek-V2-Lite's parameters one token passes through (0-1)."""
    active, total = active_parameters()
    return check_number(
        "2 (active share, V2-Lite)", answer, active / total,
        hint="count the routed experts at num_experts_per_tok / n_routed_experts, the embedding as one row "
             "(a lookup), the output head whole; ModelShape.from_config(load_model_config(...)).matrices() "
             "lists every matrix.",
    )


@SOLUTIONS.register(2)
def _solution_2() -> str:
    shape = ModelShape.from_config(load_model_config(EX2_MODEL))
    routed = sum(m.parameters for m in shape.matrices() if m.experts > 1)
    active, total = active_parameters()
    k, e = shape.num_experts_per_tok, shape.n_routed_experts
    emb = shape.vocab_size * shape.hidden_size
    return f"""
All parameters: {total:,} (ModelShape.from_config(load_model_config("{EX2_MODEL}")).parameter_count()).
Routed experts hold {routed:,}; a token uses {k} of {e}: {routed:,} × {k}/{e} = {routed * k // e:,}.
The embedding is a lookup: a token reads one row ({shape.hidden_size:,} values), not {emb:,}.
The output head computes every logit, so all of it counts. Everything else is used by every token.
  active = {total:,} − {routed:,} + {routed * k // e:,} − {emb:,} + {shape.hidden_size:,} = {active:,}
  share  = {active:,} / {total:,} = {active / total:.3f}
(The model card says 2.4 B active of 15.7 B.)
"""


def expected_v2_lite_targets() -> list[str]:
    """LoRA targets of a DeepSeek-V2-Lite-shaped model (no query compression)."""
    cfg = AutoConfig.for_model("deepseek_v2", vocab_size=512, **TINY_ARCHITECTURES["deepseek_v2"][1])
    return lora_target_modules(AutoModelForCausalLM.from_config(cfg))


def check_v2_lite_targets(answer: list[str] | str | None) -> bool:
    """Exercise 3: which module names LoRA targets on V2-Lite (order and case do not matter)."""
    return check_choice(
        "3 (V2-Lite LoRA targets)", answer, expected_v2_lite_targets(), normalize=names,
        hint="V2-Lite sets q_lora_rank=None: build a tiny one with dsnb.model.load.save_tiny_random "
             "or AutoConfig.for_model and call lora_target_modules on it.",
    )


@SOLUTIONS.register(3)
def _solution_3() -> str:
    return f"""
With q_lora_rank = None there is no low-rank query path (q_a_proj → q_b_proj): one q_proj maps the hidden
state to all heads' queries. The KV path is the same MLA path as V3, and the MLPs use the same names:
  cfg = AutoConfig.for_model("deepseek_v2", q_lora_rank=None, ...)   # tiny sizes
  lora_target_modules(AutoModelForCausalLM.from_config(cfg))
  = {expected_v2_lite_targets()}
"""

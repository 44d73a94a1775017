"""GPU memory of GRPO: the policy being trained, the reference model, and the KV cache of the sampled completions.

RL fine-tuning holds more than SFT does (``dsnb.plan.memory``): besides the policy's training memory it keeps

- **the reference model** for the KL term: a frozen 16-bit copy of the weights for full fine-tuning (2 bytes per
  parameter, no gradients or optimizer states), nothing for LoRA (the reference is the same weights with the
  adapters off), nothing when β = 0 (TRL then loads no reference);
- **the generation engine's weights**: vLLM in colocate mode loads its own 16-bit copy of the model beside the
  policy (TRL copies the updated weights into it after every optimizer step); ``model.generate`` uses the policy's;
- **the KV cache of the rollouts**: every completion sampled at once keeps its keys and values for every token of
  prompt + completion. A generation batch is ``prompts × num_generations`` sequences; bytes per token from
  ``dsnb.model.architecture.kv_cache_per_token``: DeepSeek's MLA caches the compressed latent (vLLM does, and so
  does transformers 5: ``tests/test_grpo_memory.py`` measures it on the tiny model), Llama-shaped models
  ``2 × kv_heads × head_dim`` values per layer.

vLLM in colocate mode reserves ``vllm_gpu_memory_utilization`` of the GPU for its weights and cache up front;
``estimate_grpo_memory`` says whether the cache the batch needs fits in what that share leaves after the weights
(``GRPOMemory.all_at_once``; if not, vLLM samples the batch in waves: slower, not out of memory).
Taught in notebook 12 ("Scale it up"); notebook 00 teaches the training part.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dsnb.model.architecture import kv_cache_per_token
from dsnb.plan.gpus import gpu_spec
from dsnb.plan.memory import GiB, estimate_training_memory
from dsnb.plan.shape import as_shape

#: Generation engines ``estimate_grpo_memory`` knows: vLLM colocated with training, or transformers' ``generate``.
ENGINES = ("vllm", "transformers")


def kv_cache_bytes_per_token(model: Any, bytes_per_element: int = 2) -> float:
    """Bytes of KV cache one token of one sequence takes, all layers (``kv_cache_per_token``: MLA's latent for
    DeepSeek-V2/V3, which vLLM and transformers 5 both cache; keys + values of every KV head for Llama shapes)."""
    return kv_cache_per_token(_shape_config(as_shape(model)), bytes_per_element=bytes_per_element)[
        "cache bytes per token (all layers)"]


@dataclass(frozen=True)
class GRPOMemory:
    """GiB per GPU of a GRPO step by part, the GPU it was sized for, and what was assumed (``details``)."""

    policy_training: float
    reference: float
    generation_weights: float
    kv_cache: float
    vllm_reserved: float
    gpu: str
    gpu_gib: float
    details: dict = field(default_factory=dict)

    @property
    def total(self) -> float:
        """Everything resident at the peak: training + reference + vLLM's reservation (it never takes more: a batch
        whose cache does not fit runs in waves), or + the cache when ``generate`` samples with the policy's weights."""
        generation = self.vllm_reserved if self.vllm_reserved else self.generation_weights + self.kv_cache
        return self.policy_training + self.reference + generation

    @property
    def all_at_once(self) -> bool:
        """Whether every sampled sequence's cache fits at once (with vLLM: in its share, after its weights)."""
        return not self.vllm_reserved or self.generation_weights + self.kv_cache <= self.vllm_reserved

    @property
    def fits(self) -> bool:
        """The total fits in the GPU (and vLLM's share holds its weights with room for a cache)."""
        return self.total <= self.gpu_gib and (not self.vllm_reserved or self.generation_weights < self.vllm_reserved)

    def rows(self) -> dict[str, float]:
        """The parts, the total and the GPU's memory, in GiB (for a table)."""
        return {"policy training": self.policy_training, "reference model": self.reference,
                "generation weights": self.generation_weights, "KV cache of the rollouts": self.kv_cache,
                "vLLM reservation": self.vllm_reserved, "total": self.total, f"{self.gpu} memory": self.gpu_gib}


def estimate_grpo_memory(model: Any, *, method: str = "lora", prompts_per_generation: int = 8,
                         num_generations: int = 8, prompt_len: int = 512, completion_len: int = 1024,
                         micro_batch_size: int = 8, kl_coef: float = 0.04, engine: str = "vllm",
                         vllm_gpu_memory_utilization: float = 0.3, gpu: Any = "H100 80GB",
                         gradient_checkpointing: bool = True, precision: str = "bf16-mixed", **plan: Any) -> GRPOMemory:
    """GiB per GPU for one GRPO step of ``model`` (a ``configs/models`` name, a config, or a ``ModelShape``).

    ``prompts_per_generation × num_generations`` completions are sampled at once (TRL's generation batch);
    the policy trains on ``micro_batch_size`` sequences of ``prompt_len + completion_len`` tokens per forward;
    other ``TrainingPlan`` fields (``lora_rank``, ``zero_stage``, ``accounting``...) pass through ``plan``.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r}: use one of {ENGINES}")
    if min(prompts_per_generation, num_generations, prompt_len, completion_len, micro_batch_size) < 1:
        raise ValueError("prompts, generations, lengths and the micro-batch must all be at least 1")
    if not 0 < vllm_gpu_memory_utilization < 1:
        raise ValueError(f"vllm_gpu_memory_utilization={vllm_gpu_memory_utilization}: a share of the GPU in (0, 1)")
    spec = gpu_spec(gpu)
    shape = as_shape(model)
    params = shape.parameter_count()
    seq = prompt_len + completion_len
    training = estimate_training_memory(shape, method=method, micro_batch_size=micro_batch_size, seq_len=seq,
                                        gradient_checkpointing=gradient_checkpointing, precision=precision, **plan)
    sixteen_bit = params * 2 / GiB
    reference = sixteen_bit if method == "full" and kl_coef > 0 else 0.0
    sequences = prompts_per_generation * num_generations
    per_token = kv_cache_bytes_per_token(shape)
    kv = sequences * seq * per_token / GiB
    vllm = engine == "vllm"
    return GRPOMemory(
        policy_training=training.total / GiB, reference=reference,
        generation_weights=sixteen_bit if vllm else 0.0, kv_cache=kv,
        vllm_reserved=vllm_gpu_memory_utilization * spec.memory_gib if vllm else 0.0,
        gpu=spec.name, gpu_gib=spec.memory_gib,
        details={"parameters": params, "sequences sampled at once": sequences, "tokens per sequence": seq,
                 "KV cache bytes per token": per_token, "training plan": training.details.get("plan", method),
                 "engine": engine, "reference": ("frozen 16-bit copy" if reference else
                                                 "none (beta = 0)" if kl_coef == 0 else "adapters off")})


def _shape_config(shape: Any) -> dict[str, Any]:
    """The fields ``kv_cache_per_token`` reads, from a ``ModelShape``."""
    return {"num_hidden_layers": shape.num_hidden_layers, "num_attention_heads": shape.num_attention_heads,
            "num_key_value_heads": shape.num_key_value_heads, "hidden_size": shape.hidden_size,
            "head_dim": shape.head_dim, "kv_lora_rank": shape.kv_lora_rank, "qk_rope_head_dim": shape.qk_rope_head_dim,
            "qk_nope_head_dim": shape.qk_nope_head_dim, "v_head_dim": shape.v_head_dim}

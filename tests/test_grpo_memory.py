"""GRPO's memory estimate (dsnb.plan.rl): the KV cache per token measured on the tiny model's real cache, the
reference and vLLM parts by definition, the H100 figure of notebook 12's Scale-it-up section."""

from __future__ import annotations

import pytest
import torch

from dsnb.model.architecture import measured_kv_cache_bytes
from dsnb.plan.memory import GiB, estimate_training_memory
from dsnb.plan.rl import estimate_grpo_memory, kv_cache_bytes_per_token
from dsnb.plan.shape import as_shape


def test_kv_cache_per_token_is_what_the_tiny_model_caches(base):
    model = base[0]
    ids = torch.randint(0, model.config.vocab_size, (1, 40))
    measured = measured_kv_cache_bytes(model, ids) / ids.shape[1]  # fp32 cache: 4 bytes per element
    assert measured == kv_cache_bytes_per_token(model.config, bytes_per_element=4)


def test_llama_cache_is_keys_and_values_of_every_head():
    # deepseek-coder-6.7b: 32 layers x 2 (K, V) x 32 heads x 128 dims x 2 bytes
    assert kv_cache_bytes_per_token("deepseek-coder-6.7b-base") == 32 * 2 * 32 * 128 * 2


def test_parts_by_definition():
    name, g, p, prompt, completion = "deepseek-coder-6.7b-base", 8, 4, 300, 200
    params = as_shape(name).parameter_count()
    lora = estimate_grpo_memory(name, method="lora", num_generations=g, prompts_per_generation=p, prompt_len=prompt,
                                completion_len=completion, micro_batch_size=4, vllm_gpu_memory_utilization=0.4)
    assert lora.reference == 0 and lora.generation_weights == pytest.approx(params * 2 / GiB)
    assert lora.kv_cache == pytest.approx(g * p * (prompt + completion) * 32 * 2 * 32 * 128 * 2 / GiB)
    assert lora.vllm_reserved == pytest.approx(0.4 * lora.gpu_gib) and lora.gpu == "H100 80GB"
    training = estimate_training_memory(name, method="lora", micro_batch_size=4, seq_len=prompt + completion,
                                        gradient_checkpointing=True, precision="bf16-mixed")
    assert lora.policy_training == pytest.approx(training.total / GiB)
    assert lora.total == pytest.approx(lora.policy_training + lora.vllm_reserved)
    full = estimate_grpo_memory(name, method="full", num_generations=g, prompts_per_generation=p, prompt_len=prompt,
                                completion_len=completion, micro_batch_size=4)
    assert full.reference == pytest.approx(params * 2 / GiB) and not full.fits  # 6.7B full RL needs more than one H100
    no_kl = estimate_grpo_memory(name, method="full", kl_coef=0.0, engine="transformers")
    assert no_kl.reference == 0 and no_kl.generation_weights == 0 and no_kl.vllm_reserved == 0
    assert no_kl.total == pytest.approx(no_kl.policy_training + no_kl.kv_cache)


def test_a_batch_whose_cache_does_not_fit_vllms_share_runs_in_waves():
    small_share = estimate_grpo_memory("deepseek-coder-6.7b-base", prompts_per_generation=16, num_generations=16,
                                       vllm_gpu_memory_utilization=0.3)
    assert not small_share.all_at_once and small_share.fits  # vLLM queues what does not fit: slower, not OOM
    mla = estimate_grpo_memory("deepseek-v2-lite", prompts_per_generation=16, num_generations=16,
                               vllm_gpu_memory_utilization=0.6, gpu="A100 80GB")
    assert mla.kv_cache < 0.1 * small_share.kv_cache  # MLA's latent: far smaller per token than Llama's K and V


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="engine"):
        estimate_grpo_memory("deepseek-coder-1.3b-base", engine="tgi")
    with pytest.raises(ValueError, match="share of the GPU"):
        estimate_grpo_memory("deepseek-coder-1.3b-base", vllm_gpu_memory_utilization=1.5)
    with pytest.raises(ValueError, match="at least 1"):
        estimate_grpo_memory("deepseek-coder-1.3b-base", num_generations=0)

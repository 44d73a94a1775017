from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

from dsnb.model.architecture import (
    expert_load,
    forward_flops,
    kv_cache_per_token,
    measured_kv_cache_bytes,
    parameter_breakdown,
)
from dsnb.model.pretrain import tiny_deepseek_config


@pytest.fixture(scope="module")
def eager_model():
    torch.manual_seed(0)
    cfg = tiny_deepseek_config()
    cfg._attn_implementation = "eager"  # every matmul visible to torch's flop counter
    cfg._experts_implementation = "eager"
    return DeepseekV3ForCausalLM(cfg).eval()


@pytest.mark.parametrize("seq_len", [16, 96])
def test_forward_flops_match_torch_flop_counter(eager_model, seq_len):
    x = torch.randint(0, 4096, (2, seq_len))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        eager_model(input_ids=x)
    assert forward_flops(eager_model.config, seq_len, batch=2)["total"] == counter.get_total_flops()


def test_parameter_breakdown_sums_and_active_share(eager_model):
    rows = {r["component"]: r for r in parameter_breakdown(eager_model)}
    total = sum(p.numel() for p in eager_model.parameters())
    assert rows["total"]["parameters"] == total
    assert sum(r["parameters"] for k, r in rows.items() if k != "total") == total
    cfg = eager_model.config
    routed = rows["routed experts"]
    assert routed["active per token"] == routed["parameters"] * cfg.num_experts_per_tok // cfg.n_routed_experts
    assert {"attention", "router", "shared experts", "dense MLP", "embeddings"} <= set(rows)


def test_kv_cache_formula_matches_what_the_model_caches(eager_model):
    n = 40
    measured = measured_kv_cache_bytes(eager_model, torch.randint(0, 4096, (1, n)))
    assert measured / n == kv_cache_per_token(eager_model.config, bytes_per_element=4)["cache bytes per token (all layers)"]


def test_kv_cache_of_published_deepseek_v3():
    full = DeepseekV3Config()  # transformers' defaults are DeepSeek-V3's published shape
    kv = kv_cache_per_token(full)
    assert kv["attention"] == "MLA" and kv["cache elements per token per layer"] == 512 + 64
    assert kv["MHA elements per token per layer"] == 128 * (192 + 128)
    assert kv["cache bytes per token (all layers)"] == 576 * 61 * 2


def test_expert_load_counts_every_routed_token(eager_model):
    x = torch.randint(0, 4096, (2, 30))
    mask = torch.ones_like(x)
    mask[1, 20:] = 0
    load = expert_load(eager_model, x, attention_mask=mask)
    cfg = eager_model.config
    assert load.shape == (cfg.num_hidden_layers - cfg.first_k_dense_replace, cfg.n_routed_experts)
    assert (load.sum(dim=1) == int(mask.sum()) * cfg.num_experts_per_tok).all()


def test_flops_reject_unknown_attention():
    with pytest.raises(ValueError):
        forward_flops(tiny_deepseek_config(), 8, attention="linear")


@pytest.mark.parametrize("model_type,kind", [("llama", "MHA"), ("qwen2", "GQA")])
def test_cache_and_routing_on_dense_architectures(model_type, kind, tokenizer, tmp_path):
    """Notebook 01 runs on a deepseek-coder (Llama) or R1-Distill (Qwen2) checkpoint too."""
    from dsnb.model.load import load_model, save_tiny_random
    from dsnb.model.routing import load_imbalance

    model, _ = load_model(save_tiny_random(model_type, tmp_path / model_type, tokenizer=tokenizer))
    kv = kv_cache_per_token(model.config, bytes_per_element=4)
    assert kv["attention"] == kind and (kv["cache / MHA"] == 1.0) == (kind == "MHA")
    n = 24
    assert measured_kv_cache_bytes(model, torch.randint(0, 4096, (1, n))) / n == kv["cache bytes per token (all layers)"]
    load = expert_load(model, torch.randint(0, 4096, (1, n)))
    assert load.numel() == 0 and load_imbalance(load).numel() == 0


def test_one_expert_count_reader_for_every_family():
    from transformers import DeepseekV3Config, LlamaConfig, MixtralConfig, Qwen2MoeConfig

    from dsnb.model.experts import num_routed_experts

    assert num_routed_experts(DeepseekV3Config(n_routed_experts=6)) == 6
    assert num_routed_experts(MixtralConfig(num_local_experts=5)) == 5
    assert num_routed_experts(Qwen2MoeConfig(num_experts=7)) == 7
    assert num_routed_experts({"n_routed_experts": 3}) == 3  # a config.json read as a dict
    assert num_routed_experts(LlamaConfig()) == num_routed_experts({}) == 0


def test_estimator_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, dsnb.plan.memory, dsnb.plan.fit; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"

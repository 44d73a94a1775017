"""dsnb.plan.estimate and dsnb.plan.measure: the estimator against hand-computed standard formulas and against real tensors."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig

from dsnb.model.load import TINY_ARCHITECTURES
from dsnb.model.pretrain import tiny_deepseek_config
from dsnb.plan.estimate import (
    NF4_BYTES_PER_PARAM,
    ModelShape,
    TrainingPlan,
    activation_bytes,
    estimate_training_memory,
    korthikanti_layer_bytes,
    list_model_configs,
    load_model_config,
    lora_parameter_count,
)
from dsnb.plan.measure import measure_activation_bytes, tiny_model_check

# A small Llama shape whose numbers are easy to work out by hand.
V, H, L, HEADS, INTER = 1000, 64, 2, 4, 128
LLAMA = dict(vocab_size=V, hidden_size=H, num_hidden_layers=L, num_attention_heads=HEADS,
             num_key_value_heads=HEADS, intermediate_size=INTER, tie_word_embeddings=False)
P = 2 * V * H + L * (4 * H * H + 3 * H * INTER + 2 * H) + H  # embeddings + head, layers, final norm
TENSORS = 2 + L * (4 + 3 + 2) + 1


def test_parameter_count_by_hand_and_by_transformers():
    shape = ModelShape.from_config(LLAMA)
    assert shape.parameter_count() == P == 210_240
    assert shape.tensor_count() == TENSORS
    model = AutoModelForCausalLM.from_config(LlamaConfig(**LLAMA))
    assert shape.parameter_count() == sum(p.numel() for p in model.parameters())
    assert shape.tensor_count() == len(list(model.parameters()))


@pytest.mark.parametrize("model_type", sorted(TINY_ARCHITECTURES))
def test_parameter_count_matches_each_architecture(model_type):
    config = AutoConfig.for_model(model_type, vocab_size=512, **TINY_ARCHITECTURES[model_type][1])
    model = AutoModelForCausalLM.from_config(config)
    shape = ModelShape.from_config(config)
    assert shape.parameter_count() == sum(p.numel() for p in model.parameters())
    assert shape.tensor_count() == len(list(model.parameters()))


def test_full_mixed_precision_adamw_is_16_bytes_per_param():
    b = estimate_training_memory(LLAMA, precision="bf16-mixed", optimizer="adamw")
    assert b.weights == 2 * P and b.gradients == 2 * P
    assert b.optimizer_states == 12 * P + 4 * TENSORS  # fp32 master + m + v, plus AdamW's step scalars
    assert b.model_states == 16 * P + 4 * TENSORS


@pytest.mark.parametrize("precision,optimizer,per_param", [
    ("fp32", "adamw", 16), ("bf16-pure", "adamw", 8), ("fp16-mixed", "sgd", 8), ("fp32", "sgd", 8),
    ("fp32", "sgd-momentum", 12), ("bf16-mixed", "adamw-8bit", 2 + 2 + 4 + 2 + 8 / 256),
])
def test_precision_and_optimizer_bytes(precision, optimizer, per_param):
    b = estimate_training_memory(LLAMA, precision=precision, optimizer=optimizer)
    steps = 4 * TENSORS if optimizer == "adamw" else 0
    assert b.model_states == pytest.approx(per_param * P + steps)


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_zero_stages_partition_states_then_grads_then_weights(stage):
    n = 4
    b = estimate_training_memory(LLAMA, zero_stage=stage, num_gpus=n)
    opt = 12 * P + 4 * TENSORS
    assert b.optimizer_states == pytest.approx(opt / n if stage >= 1 else opt)
    assert b.gradients == pytest.approx(2 * P / n if stage >= 2 else 2 * P)
    assert b.weights == pytest.approx(2 * P / n if stage >= 3 else 2 * P)


def test_zero3_paper_example():
    # ZeRO paper, Figure 1: 7.5B parameters, 64 GPUs: 120 GB -> 1.9 GB of model states per GPU.
    shape = ModelShape.from_parameters(7.5e9, hidden_size=4096, num_layers=32, num_heads=32)
    b = estimate_training_memory(shape, zero_stage=3, num_gpus=64, precision="fp16-mixed", optimizer="sgd")
    full = estimate_training_memory(shape, zero_stage=0, precision="fp16-mixed", optimizer="adamw")
    assert full.model_states / 1e9 == pytest.approx(120, rel=0.01)
    z3 = estimate_training_memory(shape, zero_stage=3, num_gpus=64)
    assert z3.model_states / 1e9 == pytest.approx(1.875, rel=0.01)
    assert b.model_states < z3.model_states


def test_offload_moves_optimizer_and_grads_to_cpu():
    b = estimate_training_memory(LLAMA, zero_stage=2, num_gpus=2, offload="optimizer")
    assert b.optimizer_states == 0 and b.gradients == 0
    assert b.cpu_offloaded == pytest.approx(12 * P + 4 * TENSORS + 2 * P)
    with pytest.raises(ValueError, match="ZeRO"):
        TrainingPlan(offload="optimizer")
    with pytest.raises(ValueError, match="zero_stage=3"):
        TrainingPlan(offload="optimizer+params", zero_stage=2)


def test_lora_by_hand():
    r = 8
    adapters = L * 4 * r * (H + H)  # q, k, v, o are all h x h here
    assert lora_parameter_count(ModelShape.from_config(LLAMA), r, "attention") == (adapters, L * 4 * 2)
    b = estimate_training_memory(LLAMA, method="lora", lora_rank=r, lora_targets="attention")
    assert b.weights == 2 * P + 4 * adapters  # frozen 16-bit base + fp32 adapters
    assert b.gradients == 4 * adapters
    assert b.optimizer_states == 8 * adapters + 4 * L * 4 * 2
    mlp = L * r * ((H + INTER) * 3)
    assert lora_parameter_count(ModelShape.from_config(LLAMA), r)[0] == adapters + mlp


def test_lora_counts_fused_experts_like_peft():
    shape = ModelShape.from_config(tiny_deepseek_config())
    params, _ = lora_parameter_count(shape, 4, ("experts.gate_up_proj", "experts.down_proj"))
    assert params == 3 * 4 * 8 * ((128 + 192) + (96 + 128))  # r * E * (in + out), 3 MoE layers
    with pytest.raises(ValueError, match="not matrices"):
        lora_parameter_count(shape, 4, ("k_proj",))


def test_qlora_weights():
    b = estimate_training_memory(LLAMA, method="qlora", lora_rank=8, lora_targets="attention")
    quantized = L * (4 * H * H + 3 * H * INTER)
    adapters = L * 4 * 8 * 2 * H
    assert b.weights == pytest.approx(quantized * NF4_BYTES_PER_PARAM + (P - quantized) * 2 + 4 * adapters)
    assert NF4_BYTES_PER_PARAM == pytest.approx(0.5159, abs=1e-4)


def test_korthikanti_formula_by_hand():
    s, b, h, a = 2048, 1, 4096, 32
    assert korthikanti_layer_bytes(s, b, h, a) == s * b * h * 34 + 5 * a * s * s * b
    assert korthikanti_layer_bytes(s, b, h, a, "full") == 2 * s * b * h
    assert korthikanti_layer_bytes(s, b, h, a, "selective") == 34 * s * b * h


def test_activations_behave():
    shape = ModelShape.from_config(load_model_config("deepseek-coder-6.7b-base"))
    off = activation_bytes(shape, 2, 1024)
    on = activation_bytes(shape, 2, 1024, gradient_checkpointing=True)
    assert on < 0.2 * off
    assert activation_bytes(shape, 4, 1024) == pytest.approx(2 * off)
    assert activation_bytes(shape, 2, 1024, attention="eager") > off
    # standard attention in the paper's terms: the eager score matrix adds as^2 per layer
    per_layer_eager = (activation_bytes(shape, 1, 1024, attention="eager") - activation_bytes(shape, 1, 1024)) / 32
    assert per_layer_eager == pytest.approx(32 * 1024 * 1024 * (2 + 4))


def test_moe_activations_follow_routed_tokens_not_expert_count():
    cfg = tiny_deepseek_config()
    base = activation_bytes(ModelShape.from_config(cfg), 1, 64)
    assert activation_bytes(ModelShape.from_config(tiny_deepseek_config(n_routed_experts=32)), 1, 64) \
        == pytest.approx(base + 3 * 64 * 4 * 2 * 24, rel=1e-9)  # only the fp32 router scores grow
    assert activation_bytes(ModelShape.from_config(tiny_deepseek_config(num_experts_per_tok=4)), 1, 64) > base


def test_published_configs_have_sources_and_match_their_sizes():
    names = list_model_configs()
    assert {"deepseek-v2-lite", "deepseek-v3", "deepseek-coder-1.3b-base", "deepseek-coder-6.7b-base",
            "deepseek-coder-33b-base", "deepseek-llm-7b-base", "deepseek-llm-67b-base", "llama-13b",
            "llama-65b"} <= set(names)
    for name in names:
        doc = load_model_config(name)
        assert doc["source"] and doc["hub_id"]
        n = ModelShape.from_config(doc).parameter_count()
        assert n == pytest.approx(doc["published_parameters"], rel=0.04), name
    v3 = ModelShape.from_config(load_model_config("deepseek-v3"))
    assert v3.active_parameter_count() / 1e9 == pytest.approx(37, rel=0.03)
    with pytest.raises(FileNotFoundError, match="choose one of"):
        load_model_config("no-such-model")


def test_input_forms_agree():
    doc = load_model_config("deepseek-coder-1.3b-base")
    a = estimate_training_memory(doc)
    b = estimate_training_memory(doc["config"])
    c = estimate_training_memory(LlamaConfig(**doc["config"]))
    d = estimate_training_memory("deepseek-coder-1.3b-base")
    assert a.total == b.total == c.total == d.total
    shape = ModelShape.from_parameters(1.346e9, hidden_size=2048, num_layers=24, num_heads=16, vocab_size=32256)
    assert shape.intermediate_size == pytest.approx(5504, rel=0.01)
    with pytest.raises(ValueError, match="lacks"):
        estimate_training_memory({"hidden_size": 8})
    with pytest.raises(ValueError, match="method"):
        estimate_training_memory(LLAMA, method="dora")


@pytest.mark.parametrize("method,precision", [("full", "fp32"), ("full", "bf16-pure"), ("lora", "fp32")])
def test_tiny_model_states_are_exact(method, precision):
    r = tiny_model_check(method=method, precision=precision, micro_batch_size=2, seq_len=32)
    assert r["measured"] == {k: int(v) for k, v in r["estimated"].items()}
    assert 0.75 <= r["activation_ratio"] <= 1.25


def test_activation_measurement_counts_each_storage_once():
    lin = torch.nn.Linear(8, 8)

    class Twice(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = lin

        def forward(self, x):
            y = self.lin(x)
            return type("Out", (), {"loss": (y * y).sum() + (y * y).sum()})()

    x = torch.randn(4, 8)
    m = measure_activation_bytes(Twice(), x=x)
    assert m["bytes"] == 2 * 4 * 8 * 4  # x (saved by the linear) and y (saved by both products, once)

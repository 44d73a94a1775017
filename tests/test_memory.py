"""dsnb.plan.memory, .shape, .activations and .measure: the estimator against hand-computed standard formulas and against real tensors."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig

from dsnb.model.load import TINY_ARCHITECTURES
from dsnb.model.pretrain import tiny_deepseek_config
from dsnb.plan.activations import activation_bytes, korthikanti_layer_bytes
from dsnb.plan.measure import measure_activation_bytes, tiny_model_check
from dsnb.plan.memory import (
    NF4_BYTES_PER_PARAM,
    OPTIMIZERS,
    PRECISIONS,
    TrainingPlan,
    estimate_training_memory,
    lora_parameter_count,
)
from dsnb.plan.shape import ModelShape, list_model_configs, load_model_config

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


def test_realistic_mixed_precision_is_18_bytes_per_param():
    """DeepSpeed / Megatron keep fp32 gradients; autocast keeps fp32 weights plus a 16-bit copy: 18 bytes either way."""
    for zero in (0, 1, 2, 3):
        b = estimate_training_memory(LLAMA, precision="bf16-mixed", accounting="realistic", zero_stage=zero)
        assert b.model_states == 18 * P + 4 * TENSORS, zero
    autocast = estimate_training_memory(LLAMA, precision="bf16-mixed", accounting="realistic")
    deepspeed = estimate_training_memory(LLAMA, precision="bf16-mixed", accounting="realistic", zero_stage=3)
    assert autocast.weights == 6 * P and autocast.gradients == 4 * P  # fp32 weights + 16-bit copy, fp32 grads
    assert deepspeed.weights == 2 * P and deepspeed.gradients == 4 * P
    assert "realistic accounting" in deepspeed.details["plan"] and deepspeed.details["accounting"] == "realistic"
    with pytest.raises(ValueError, match="accounting"):
        TrainingPlan(accounting="optimistic")


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_the_accountings_differ_only_for_mixed_precision(precision, method):
    plans = [dict(), dict(zero_stage=3, num_gpus=4), dict(zero_stage=2, num_gpus=2, offload="optimizer"),
             dict(zero_stage=2, num_gpus=8)]
    for extra in plans:
        lo = estimate_training_memory(LLAMA, precision=precision, method=method, **extra)
        for accounting in ("realistic", "deepspeed") if extra else ("realistic",):
            hi = estimate_training_memory(LLAMA, precision=precision, method=method, accounting=accounting, **extra)
            assert hi.total >= lo.total and hi.cpu_offloaded >= lo.cpu_offloaded
            assert hi.activations == lo.activations
            same_states = method != "full" or precision in ("fp32", "bf16-pure")
            assert (hi.model_states == lo.model_states) is same_states or extra.get("offload")


def test_offload_realistic_is_fp32_gradients_times_deepspeeds_buffer():
    """ZeRO-Offload's CPU side: optimizer states + fp32 gradients, times the 1.5 DeepSpeed's estimator adds."""
    gpu = estimate_training_memory(LLAMA, zero_stage=2, num_gpus=2, accounting="realistic")
    off = estimate_training_memory(LLAMA, zero_stage=2, num_gpus=2, offload="optimizer", accounting="realistic")
    assert off.cpu_offloaded == pytest.approx(1.5 * 2 * (gpu.optimizer_states + gpu.gradients))
    assert off.cpu_offloaded == pytest.approx(1.5 * (16 * P + 4 * TENSORS))



@pytest.mark.parametrize("accounting", ["realistic", "deepspeed"])
@pytest.mark.parametrize("offload", ["none", "optimizer", "optimizer+params"])
def test_zero3_equals_deepspeeds_own_estimator(offload, accounting):
    """DeepSpeed's ``estimate_zero3_model_states_mem_needs`` (largest layer left out: we count it as temporary)."""
    stage3 = pytest.importorskip("deepspeed.runtime.zero.stage3")
    n = 4
    cpu, gpu = stage3.estimate_zero3_model_states_mem_needs(P, 0, num_gpus_per_node=n, cpu_offload=offload != "none",
                                                            cpu_offload_params=offload == "optimizer+params")[:2]
    b = estimate_training_memory(LLAMA, zero_stage=3, num_gpus=n, offload=offload, accounting=accounting)
    steps = 4 * TENSORS  # AdamW's fp32 step scalars, which DeepSpeed leaves out
    assert b.model_states == pytest.approx(gpu + (steps / n if offload == "none" else 0), abs=1)
    assert b.cpu_offloaded == pytest.approx(cpu + (1.5 * steps if offload != "none" else 0))


@pytest.mark.parametrize("model", [LLAMA, "deepseek-coder-6.7b-base", "llama-13b"])
@pytest.mark.parametrize("n", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("offload", ["none", "optimizer"])
def test_deepspeed_zero2_equals_deepspeeds_own_estimator(model, n, offload):
    """DeepSpeed's ``estimate_zero2_model_states_mem_needs``: 2 + 18/N bytes per parameter on each GPU (16-bit
    and fp32 gradient partitions), and on the CPU each process's fp32 copy of the model or the offloaded states."""
    stage12 = pytest.importorskip("deepspeed.runtime.zero.stage_1_and_2")
    shape = ModelShape.from_config(LLAMA if isinstance(model, dict) else load_model_config(model))
    params, steps = shape.parameter_count(), 4 * shape.tensor_count()  # DeepSpeed leaves AdamW's step scalars out
    cpu, gpu = stage12.estimate_zero2_model_states_mem_needs(params, num_gpus_per_node=n, cpu_offload=offload != "none")
    b = estimate_training_memory(shape, zero_stage=2, num_gpus=n, offload=offload, accounting="deepspeed")
    assert b.model_states == pytest.approx(gpu + (steps / n if offload == "none" else 0), abs=1)
    offloaded_steps = 1.5 * steps if offload != "none" and 4 * n <= 16 else 0  # the max() is the offloaded states
    assert b.cpu_offloaded == pytest.approx(cpu + offloaded_steps, abs=1)
    assert "deepspeed accounting" in b.details["plan"]


def test_deepspeed_zero2_differs_from_realistic_by_the_16bit_gradients_and_the_loading_copies():
    """Llama-2-7B-sized shape, 8 GPUs: 2 + 18/8 vs 2 + 16/8 bytes per parameter on each GPU; on the CPU
    4 × 8 (every process loads the model in fp32) vs the 16 offloaded, times 1.5."""
    plan = TrainingPlan(zero_stage=2, num_gpus=8)
    steps = 4 * TENSORS
    ds = estimate_training_memory(LLAMA, plan, accounting="deepspeed")
    rl = estimate_training_memory(LLAMA, plan, accounting="realistic")
    assert ds.model_states - rl.model_states == pytest.approx(2 * P / 8)
    assert ds.gradients == pytest.approx(6 * P / 8) and ds.weights == rl.weights == 2 * P
    assert ds.cpu_offloaded == pytest.approx(1.5 * 4 * 8 * P) and rl.cpu_offloaded == 0
    off_ds = estimate_training_memory(LLAMA, plan, offload="optimizer", accounting="deepspeed")
    off_rl = estimate_training_memory(LLAMA, plan, offload="optimizer", accounting="realistic")
    assert off_ds.model_states == off_rl.model_states == 2 * P
    assert off_ds.cpu_offloaded == pytest.approx(1.5 * 32 * P) and off_rl.cpu_offloaded == pytest.approx(1.5 * (16 * P + steps))


def test_deepspeed_zero1_keeps_the_16bit_gradients_whole():
    """DeepSpeed publishes no ZeRO-1 estimator; stage 1 is stage 2 with the 16-bit gradients unpartitioned: 4 + 16/N."""
    n = 4
    b = estimate_training_memory(LLAMA, zero_stage=1, num_gpus=n, accounting="deepspeed")
    assert b.model_states == pytest.approx((4 + 16 / n) * P + 4 * TENSORS / n)
    one = estimate_training_memory(LLAMA, zero_stage=1, num_gpus=1, accounting="deepspeed")
    assert one.model_states == estimate_training_memory(LLAMA, zero_stage=2, num_gpus=1, accounting="deepspeed").model_states
    with pytest.raises(ValueError, match="zero_stage 1-3"):
        TrainingPlan(accounting="deepspeed")


def test_optimizers_and_precisions_order_as_expected():
    """Properties, not the table again: fewer optimizer buffers cost less; pure bf16 halves fp32's model states."""
    states = {o: estimate_training_memory(LLAMA, optimizer=o).model_states for o in OPTIMIZERS}
    assert states["sgd"] < states["adamw-8bit"] < states["sgd-momentum"] < states["adamw"]
    fp32 = estimate_training_memory(LLAMA, precision="fp32", optimizer="sgd").model_states
    pure = estimate_training_memory(LLAMA, precision="bf16-pure", optimizer="sgd").model_states
    assert pure == fp32 / 2


@pytest.mark.parametrize("accounting", ["minimum", "realistic"])
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_stages_partition_states_then_grads_then_weights(stage, accounting):
    n = 4
    one = estimate_training_memory(LLAMA, zero_stage=stage, num_gpus=1, accounting=accounting)
    b = estimate_training_memory(LLAMA, zero_stage=stage, num_gpus=n, accounting=accounting)
    assert b.optimizer_states == pytest.approx(one.optimizer_states / n)
    assert b.gradients == pytest.approx(one.gradients / n if stage >= 2 else one.gradients)
    assert b.weights == pytest.approx(one.weights / n if stage >= 3 else one.weights)


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
    on_gpu = estimate_training_memory(LLAMA, zero_stage=2, num_gpus=2)
    b = estimate_training_memory(LLAMA, zero_stage=2, num_gpus=2, offload="optimizer")
    assert b.optimizer_states == 0 and b.gradients == 0 and b.weights == on_gpu.weights
    assert b.cpu_offloaded == pytest.approx(2 * (on_gpu.optimizer_states + on_gpu.gradients))  # both GPUs' shares
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


def test_korthikanti_recomputation_removes_the_quadratic_term():
    """Selective recomputation drops the attention scores (quadratic in s); what is left is linear in s and b."""
    h, a = 4096, 32
    quad = [korthikanti_layer_bytes(s, 1, h, a) - korthikanti_layer_bytes(s, 1, h, a, "selective") for s in (1024, 2048)]
    assert quad[1] == 4 * quad[0]
    for mode in ("selective", "full"):
        assert korthikanti_layer_bytes(2048, 2, h, a, mode) == 2 * korthikanti_layer_bytes(1024, 2, h, a, mode) \
            == 2 * korthikanti_layer_bytes(2048, 1, h, a, mode)
    assert korthikanti_layer_bytes(2048, 1, h, a, "full") < korthikanti_layer_bytes(2048, 1, h, a, "selective")


def test_activations_behave():
    shape = ModelShape.from_config(load_model_config("deepseek-coder-6.7b-base"))
    off = activation_bytes(shape, 2, 1024)
    on = activation_bytes(shape, 2, 1024, gradient_checkpointing=True)
    assert on < 0.2 * off
    assert activation_bytes(shape, 4, 1024) == pytest.approx(2 * off)  # linear in the batch ...
    assert activation_bytes(shape, 2, 2048) == pytest.approx(2 * off)  # ... and, with flash attention, in s
    assert activation_bytes(shape, 2, 2048, gradient_checkpointing=True) == pytest.approx(2 * on)
    assert activation_bytes(shape, 2, 1024, attention="eager") > off
    # standard attention in the paper's terms: the eager score matrix adds as^2 per layer
    per_layer_eager = (activation_bytes(shape, 1, 1024, attention="eager") - activation_bytes(shape, 1, 1024)) / 32
    assert per_layer_eager == pytest.approx(32 * 1024 * 1024 * (2 + 4))


def test_moe_activations_follow_routed_tokens_not_expert_count():
    cfg = tiny_deepseek_config()
    base = activation_bytes(ModelShape.from_config(cfg), 1, 64)
    grow = [activation_bytes(ModelShape.from_config(tiny_deepseek_config(n_routed_experts=e)), 1, 64) - base
            for e in (16, 32)]
    assert grow[1] == pytest.approx(3 * grow[0]) and grow[1] < 0.05 * base  # only the router scores, per expert
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


def test_training_precision_names_map_onto_the_estimator():
    """FinetuneConfig's precisions (TrainingArguments' bf16/fp16 switches) are the estimator's -mixed ones."""
    from dsnb.plan.memory import TRAINING_PRECISIONS, TrainingPlan
    from dsnb.train.config import PRECISIONS as TRAIN_PRECISIONS

    assert set(TRAIN_PRECISIONS) - {"auto"} == set(TRAINING_PRECISIONS)
    for name, canonical in TRAINING_PRECISIONS.items():
        assert TrainingPlan(precision=name) == TrainingPlan(precision=canonical)
        assert canonical in PRECISIONS


def test_lora_count_equals_peft_on_a_llama_shape():
    """The count the estimator (and notebook 03's exercise 3) uses is what peft trains with 'all-linear'."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4)
    model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=8, target_modules="all-linear"))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert lora_parameter_count(ModelShape.from_config(config), 8)[0] == trainable

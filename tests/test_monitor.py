"""Training monitor: event files read back with TensorBoard's own reader; MoE load; alerts; hooks removed."""

from __future__ import annotations

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import DeepseekV3ForCausalLM, Trainer, TrainingArguments

from dsnb.model.architecture import expert_load
from dsnb.model.pretrain import tiny_deepseek_config
from dsnb.model.routing import routers
from dsnb.train.monitor import TrainingMonitor, activation_stats, grad_norms, imbalance, layer_of

VOCAB = 128


def tiny_model(seed: int = 0) -> DeepseekV3ForCausalLM:
    torch.manual_seed(seed)
    return DeepseekV3ForCausalLM(tiny_deepseek_config(vocab_size=VOCAB, num_hidden_layers=3, hidden_size=64,
                                                      intermediate_size=128, moe_intermediate_size=32))


def dataset(n: int = 16, length: int = 24, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (n, length), generator=g)
    return [{"input_ids": x, "attention_mask": torch.ones_like(x), "labels": x.clone()} for x in ids]


def train(model, monitor, tmp_path, steps: int = 6, lr: float = 1e-3) -> Trainer:
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=steps, per_device_train_batch_size=4,
                             learning_rate=lr, logging_steps=1, save_strategy="no", report_to="none",
                             use_cpu=True, disable_tqdm=True, max_grad_norm=1.0)
    trainer = Trainer(model=model, args=args, train_dataset=dataset(), callbacks=[monitor])
    trainer.train()
    monitor.close()
    return trainer


def read(log_dir) -> EventAccumulator:
    ea = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    ea.Reload()
    return ea


def test_layer_grouping():
    assert layer_of("model.layers.3.mlp.gate.weight") == "layer_03"
    assert layer_of("base_model.model.model.layers.12.self_attn.q_a_proj.lora_A.default.weight") == "layer_12"
    assert layer_of("model.embed_tokens.weight") == "embed"
    assert layer_of("lm_head.weight") == "lm_head"
    assert layer_of("model.norm.weight") == "other"


def test_grad_norms_equal_torch_clip_grad_norm():
    model = tiny_model()
    x = torch.randint(0, VOCAB, (2, 16))
    model(input_ids=x, labels=x).loss.backward()
    total, per = grad_norms(model)
    expected = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf")).item()
    assert total == pytest.approx(expected, rel=1e-5)
    assert sum(v * v for v in per.values()) ** 0.5 == pytest.approx(expected, rel=1e-5)
    assert set(per) >= {"embed", "lm_head", "layer_00", "layer_01", "layer_02"}


def test_imbalance_figures():
    peak, cv = imbalance(torch.tensor([[4.0, 4, 4, 4], [16, 0, 0, 0]]))
    assert peak.tolist() == [1.0, 4.0]
    assert cv[0].item() == 0.0 and cv[1].item() == pytest.approx(3 ** 0.5)


def test_event_files_read_back_with_tensorboard(tmp_path):
    model = tiny_model()
    log_dir = tmp_path / "tb"
    mon = TrainingMonitor(model, log_dir, grad_every=2, histogram_every=3, activation_every=2, moe_every=3, grad_band=(0.7, 1.3))
    train(model, mon, tmp_path, steps=6)
    ea = read(log_dir)
    tags = ea.Tags()
    for tag in ("loss", "learning_rate", "grad_norm", "grad_norm/after_clip", "grad_norm/layer_01", "tokens_per_s",
                "activation/layer_00/std", "activation/layer_02/max_abs",
                "moe/layer_01/tokens/expert_00", "moe/layer_02/imbalance_cv", "moe/layer_01/bias/expert_07",
                "moe/layer_01/dead_experts"):
        assert tag in tags["scalars"], tag
    assert [e.step for e in ea.Scalars("loss")] == [1, 2, 3, 4, 5, 6]
    assert [e.step for e in ea.Scalars("activation/layer_00/std")] == [2, 4, 6]
    assert [e.step for e in ea.Scalars("grad_norm/layer_01")] == [2, 4, 6]
    assert {"weights/layer_01", "grads/layer_01", "weights/embed"} <= set(tags["histograms"])
    assert [e.step for e in ea.Histograms("grads/layer_01")] == [3, 6]
    # what the reader returns is what the monitor recorded
    assert [e.value for e in ea.Scalars("loss")] == pytest.approx([v for _, v in mon.history["loss"]])
    # each window's token counts add up to tokens x top-k (4 sequences x 24 tokens x 3 steps x 2 experts)
    for _, counts in mon.expert_counts:
        assert counts.sum(dim=1).tolist() == [4 * 24 * 3 * 2] * 2
    # the activation hooks were removed after their step: only the monitor's own hooks remain
    layer0 = model.model.layers[0]
    assert not layer0._forward_hooks


def test_alerts_are_written_as_text(tmp_path):
    model = tiny_model()
    for _, router in routers(model):
        with torch.no_grad():
            router.e_score_correction_bias[:2] = 10.0  # experts 0 and 1 take every token: 2..7 are dead
    log_dir = tmp_path / "tb"
    mon = TrainingMonitor(model, log_dir, activation_every=1, moe_every=2, grad_band=(1e-6, 2e-6),
                          activation_drift=1.0001)
    train(model, mon, tmp_path, steps=4, lr=3e-2)
    kinds = {a.kind for a in mon.alerts}
    assert kinds == {"grad_norm", "dead_expert", "activation_drift"}
    dead = [a for a in mon.alerts if a.kind == "dead_expert"]
    assert {a.layer for a in dead} == {"layer_01", "layer_02"} and {a.step for a in dead} == {2, 4}
    assert "[2, 3, 4, 5, 6, 7]" in dead[0].message
    ea = read(log_dir)
    texts = [e.tensor_proto.string_val[0].decode() for e in ea.Tensors("alerts/text_summary")]
    assert len(texts) == len(mon.alerts)
    assert any("dead_expert [layer_01]" in t and t.startswith("step 2") for t in texts)
    assert any("grad_norm [all]" in t for t in texts)


def test_counts_equal_expert_load_and_work_under_lora(tmp_path):
    from dsnb.model.lora import apply_lora

    model = tiny_model()
    x = torch.randint(0, VOCAB, (2, 16))
    expected = expert_load(model, x)
    peft_model = apply_lora(model, r=4)
    mon = TrainingMonitor(peft_model, tmp_path / "tb", moe_every=1, write=False)
    assert len(mon.routers) == 2
    peft_model.train()
    with torch.no_grad():
        peft_model(input_ids=x)
    mon.step_end(1)
    (_, counts), = mon.expert_counts
    assert torch.equal(counts, expected.double())  # fresh LoRA adapters start as the identity
    mon.close()


def test_plain_loop_activation_stats_match_inline_hooks(tmp_path):
    model = tiny_model()
    x = torch.randint(0, VOCAB, (2, 16))
    mon = TrainingMonitor(model, tmp_path / "tb", activation_every=1, write=False)
    seen = {}
    handle = model.model.layers[1].register_forward_hook(lambda m, i, o: seen.update(activation_stats(o)))
    mon.step_begin(0)
    model(input_ids=x)
    handle.remove()
    mon.step_end(1)
    got = {k: mon.history[f"activation/layer_01/{k}"][0][1] for k in ("mean", "std", "max_abs")}
    assert got == pytest.approx(seen, rel=1e-4)
    mon.close()
    assert not model.model.layers[1]._forward_hooks and not model._forward_pre_hooks


def test_bad_settings_raise(tmp_path):
    with pytest.raises(ValueError, match="must be >= 1"):
        TrainingMonitor(tiny_model(), tmp_path, histogram_every=0, write=False)
    with pytest.raises(ValueError, match="low < high"):
        TrainingMonitor(tiny_model(), tmp_path, grad_band=(1.3, 0.7), write=False)


def test_calibrated_band_is_the_median_of_the_window_scaled_both_ways():
    from dsnb.train.monitor import calibrated_band

    points = [(1, 9.0), (2, 7.0), (3, 2.0), (4, 1.0), (5, 4.0), (6, 3.0), (7, 50.0)]
    assert calibrated_band(points, after=2, steps=4) == (1.25, 5.0)  # median of 2, 1, 4, 3 is 2.5
    assert calibrated_band(points, after=2, steps=3, factor=4) == (0.5, 8.0)  # median of 2, 1, 4
    with pytest.raises(ValueError, match="steps 8..17"):
        calibrated_band(points, after=7)

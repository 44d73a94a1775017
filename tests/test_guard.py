"""Stability guard: poisoned batches, NaN loss, NaN in one gradient, clean stop with a verified checkpoint, fp16."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import DeepseekV3ForCausalLM, TrainingArguments

from dsnb.model.pretrain import tiny_deepseek_config
from dsnb.train.checkpoint import MANIFEST, ManifestCallback, verify_checkpoint
from dsnb.train.guard import GuardedTrainer, StabilityGuard, check_inputs, guarded_step

VOCAB = 128
PARAM = "model.layers.1.self_attn.q_a_proj.weight"


def tiny_model(seed: int = 0) -> DeepseekV3ForCausalLM:
    torch.manual_seed(seed)
    return DeepseekV3ForCausalLM(tiny_deepseek_config(vocab_size=VOCAB, num_hidden_layers=2, hidden_size=64,
                                                      intermediate_size=128, moe_intermediate_size=32))


def dataset(n: int = 16, length: int = 16, poison: int | None = None) -> list[dict]:
    ids = torch.randint(3, VOCAB, (n, length), generator=torch.Generator().manual_seed(0))
    if poison is not None:
        ids[poison, 3] = VOCAB + 7  # a token id the embedding does not have
    return [{"input_ids": x, "attention_mask": torch.ones_like(x), "labels": x.clone()} for x in ids]


def trainer(model, tmp_path, data, guard, steps=4, lr=1e-3, callbacks=()):
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=steps, per_device_train_batch_size=4,
                             learning_rate=lr, lr_scheduler_type="constant", logging_steps=1, save_strategy="no",
                             report_to="none", use_cpu=True, disable_tqdm=True, max_grad_norm=1.0,
                             data_seed=0, seed=0)
    return GuardedTrainer(model=model, args=args, train_dataset=data, guard=guard, callbacks=list(callbacks))


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_check_inputs_names_the_problem():
    ok = {"input_ids": torch.tensor([[5, 6]]), "labels": torch.tensor([[-100, 6]])}
    assert check_inputs(ok, VOCAB) is None
    assert check_inputs({"input_ids": torch.zeros(0, 4, dtype=torch.long)}, VOCAB)[1].startswith("empty batch")
    assert check_inputs({"input_ids": torch.tensor([[5]]), "attention_mask": torch.tensor([[0]])}, VOCAB)[0] == \
        "attention_mask"
    name, why = check_inputs({"input_ids": torch.tensor([[5, 300]])}, VOCAB)
    assert name == "input_ids" and "outside the vocabulary [0, 128)" in why and "300" in why
    assert check_inputs({"input_ids": torch.tensor([[5]]), "labels": torch.tensor([[-5]])}, VOCAB)[0] == "labels"


def test_nan_in_a_batch_is_skipped_in_a_plain_loop():
    model = tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    guard = StabilityGuard()
    emb = model.get_input_embeddings()(torch.randint(0, VOCAB, (2, 8))).detach()
    emb[1, 4, 7] = float("nan")
    before = snapshot(model)
    applied = guarded_step(model, {"inputs_embeds": emb, "labels": torch.randint(0, VOCAB, (2, 8))}, opt, guard, 1)
    assert not applied
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    (bad,) = guard.bad_steps
    assert (bad.step, bad.tensor) == (1, "inputs_embeds") and bad.cause.startswith("bad data: 1 non-finite")
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-4)
    x = torch.randint(0, VOCAB, (2, 8))
    assert guarded_step(model, {"input_ids": x, "labels": x}, opt, guard, 2) and guard.in_a_row == 0


def test_poisoned_batch_in_the_trainer_skips_one_step_and_lowers_lr(tmp_path):
    model = tiny_model()
    guard = StabilityGuard()
    tr = trainer(model, tmp_path, dataset(poison=None), guard)
    order = list(tr.get_train_dataloader().sampler)  # the Trainer's shuffled order: poison the 2nd batch
    tr.train_dataset = dataset(poison=order[5])
    tr.train()
    (bad,) = guard.bad_steps
    assert bad.step == 2 and bad.tensor == "input_ids" and "outside the vocabulary" in bad.cause
    lrs = [r["learning_rate"] for r in tr.state.log_history if "learning_rate" in r]
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(1e-4)
    assert tr.state.global_step == 4 and guard.stop_message is None
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_nan_loss_is_caught_and_the_update_skipped(tmp_path):
    model = tiny_model()
    calls = {"n": 0}

    def poison_logits(_m, _i, out):
        calls["n"] += 1
        return out * float("nan") if calls["n"] == 3 else out

    model.lm_head.register_forward_hook(poison_logits)
    guard = StabilityGuard()
    tr = trainer(model, tmp_path, dataset(), guard)
    tr.train()
    (bad,) = guard.bad_steps
    assert (bad.step, bad.tensor) == (3, "loss") and "learning rate too high" in bad.cause
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_nan_in_one_gradient_names_that_parameter(tmp_path):
    model = tiny_model()
    param = dict(model.named_parameters())[PARAM]
    calls = {"n": 0}

    def poison_grad(g):
        calls["n"] += 1
        return g * float("nan") if calls["n"] == 2 else g

    param.register_hook(poison_grad)
    guard = StabilityGuard()
    tr = trainer(model, tmp_path, dataset(), guard)
    tr.train()
    (bad,) = guard.bad_steps
    assert (bad.step, bad.tensor) == (2, f"gradient of {PARAM}")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_bad_steps_in_a_row_stop_with_a_verified_checkpoint(tmp_path):
    model = tiny_model()
    param = dict(model.named_parameters())[PARAM]
    param.register_hook(lambda g: g * float("nan"))  # every step is bad
    before = snapshot(model)
    guard = StabilityGuard(max_bad_steps=3, lr_floor=2e-5)
    tr = trainer(model, tmp_path, dataset(), guard, steps=10, lr=1e-3, callbacks=[ManifestCallback()])
    tr.train()
    assert tr.state.global_step == 3 and [b.step for b in guard.bad_steps] == [1, 2, 3]
    assert guard.checkpoint == tmp_path / "out" / "checkpoint-3"
    assert (guard.checkpoint / MANIFEST).is_file()
    verify_checkpoint(guard.checkpoint)
    msg = guard.stop_message
    assert "step 3" in msg and PARAM in msg and "learning rate too high" in msg and "verified" in msg
    # no update was applied: the checkpoint holds the starting weights; LR went 1e-3 -> 1e-4 -> 2e-5 (the floor)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    saved = json.loads((guard.checkpoint / "trainer_state.json").read_text())
    assert saved["global_step"] == 3
    assert tr.optimizer.param_groups[0]["lr"] == pytest.approx(2e-5)


def test_lr_floor_is_respected():
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=3e-6)
    guard = StabilityGuard()
    emb = torch.full((1, 4, 64), float("inf"))
    guarded_step(model, {"inputs_embeds": emb}, opt, guard, 1)
    assert opt.param_groups[0]["lr"] == 1e-6


def test_fp16_overflows_where_bf16_does_not():
    """The same weights: logits near 1e5 overflow fp16 (max 65504) but fit bf16's fp32-sized range."""
    x = torch.randint(3, VOCAB, (2, 8))
    results = {}
    for dtype in (torch.float16, torch.bfloat16):
        model = tiny_model().to(dtype)
        with torch.no_grad():
            model.model.norm.weight.fill_(1e3)  # final hidden states of size ~1e3 (fine in either format)
            model.lm_head.weight.mul_(500)  # logits of size ~1e5
            logits = model(input_ids=x).logits
        assert bool(torch.isinf(logits).any()) == (dtype == torch.float16) and logits.abs().max() > 65504
        guard = StabilityGuard()
        opt = torch.optim.SGD(model.parameters(), lr=1e-6)
        results[dtype] = (guarded_step(model, {"input_ids": x, "labels": x}, opt, guard, 1), guard)
    applied16, guard16 = results[torch.float16]
    applied_bf16, guard_bf16 = results[torch.bfloat16]
    assert not applied16 and guard16.bad_steps[0].cause.startswith("fp16 overflow")
    assert applied_bf16 and guard_bf16.bad_steps == []


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="max_bad_steps"):
        StabilityGuard(max_bad_steps=0)


def test_a_loss_spike_is_a_bad_step_when_asked_and_the_stop_says_the_weights_were_already_thrown():
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    plain, spiky = StabilityGuard(), StabilityGuard(spike_factor=4, spike_window=3, max_bad_steps=2)
    for step, value in enumerate([1.0, 1.2, 0.9, 30.0, 40.0], start=1):
        for guard in (plain, spiky):
            model.weight.grad = torch.ones_like(model.weight)
            guard.see_loss(step, torch.tensor(value), fp16=False)
            guard.before_optimizer(model, opt)
    assert plain.bad_steps == [] and plain.good_losses == pytest.approx([1.0, 1.2, 0.9, 30.0, 40.0])
    assert [(b.step, b.problem, b.tensor) for b in spiky.bad_steps] == [(4, "spiking", "loss"), (5, "spiking", "loss")]
    assert "30x the median 1 of the last 3 applied steps" in spiky.bad_steps[0].cause  # median of 1.0, 1.2, 0.9
    assert spiky.should_stop and "restart from an earlier checkpoint" in spiky.stop(None)
    assert spiky.stop_message.startswith("training stopped at step 5 after 2 bad steps in a row: spiking loss")
    with pytest.raises(ValueError, match="spike_factor"):
        StabilityGuard(spike_factor=0.5)

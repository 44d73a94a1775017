"""Distillation (notebook 04): the student shrink, the frozen teacher, accumulation, tokenizer check, top-k."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import TrainerCallback

from dsnb.train.chat import build_sft_data, to_dataset
from dsnb.train.config import ConfigError, FinetuneConfig
from dsnb.train.distill import (
    DistillationTrainer,
    check_same_tokenizer,
    run_distillation,
    shrink_model,
    topk_bytes_per_token,
    topk_kl,
    topk_mass,
    topk_teacher,
)
from dsnb.train.losses import CombinedLoss
from dsnb.train.sft import build_trainer


@pytest.fixture(scope="module")
def small_data(corpus, tokenizer):
    return build_sft_data(corpus.pairs_in("train"), tokenizer, limit=32, max_seq_len=96)


def test_shrink_model_keeps_the_base_weights_where_shapes_allow(base):
    model = base[0]
    student, counts = shrink_model(model, num_hidden_layers=2, n_routed_experts=4)
    assert counts["random"] == 0 and counts["sliced"] > 0
    assert student.config.num_hidden_layers == 2 and student.config.n_routed_experts == 4
    assert sum(p.numel() for p in student.parameters()) < 0.7 * sum(p.numel() for p in model.parameters())
    s, t = student.state_dict(), model.state_dict()
    torch.testing.assert_close(s["model.layers.1.mlp.experts.gate_up_proj"], t["model.layers.1.mlp.experts.gate_up_proj"][:4])
    torch.testing.assert_close(s["model.layers.1.mlp.gate.weight"], t["model.layers.1.mlp.gate.weight"][:4])
    torch.testing.assert_close(s["lm_head.weight"], t["lm_head.weight"])
    assert "model.layers.2.self_attn.o_proj.weight" not in s
    with pytest.raises(ValueError, match="n_routed_experts"):
        shrink_model(model, n_routed_experts=1)  # fewer than the experts each token uses
    with pytest.raises(ValueError, match="num_hidden_layers"):
        shrink_model(model, num_hidden_layers=9)


def test_same_tokenizer_check(tokenizer):
    check_same_tokenizer(tokenizer, copy.deepcopy(tokenizer))
    other = copy.deepcopy(tokenizer)
    other.add_tokens(["<a-new-token>"])
    with pytest.raises(ValueError, match="tokenizers differ"):
        check_same_tokenizer(tokenizer, other)


class _GradCatcher(TrainerCallback):
    def __init__(self, model):
        self.model, self.grads = model, {}

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.grads = {n: p.grad.detach().clone() for n, p in self.model.named_parameters() if p.grad is not None}


def _trainer(base, data, tmp_path, loss_fn, per_device=8, accumulation=1, steps=1, name="d"):
    teacher = copy.deepcopy(base[0])
    student, _ = shrink_model(base[0], num_hidden_layers=2, n_routed_experts=4)
    cfg = FinetuneConfig(output_dir=str(tmp_path / name), max_steps=steps, eval_steps=None, logging_steps=1,
                         per_device_batch_size=per_device, gradient_accumulation_steps=accumulation,
                         max_grad_norm=0.0, save_steps=None)
    catcher = _GradCatcher(student)
    trainer = build_trainer(cfg, student, base[1], to_dataset(data.examples), callbacks=[catcher], progress=False,
                            trainer_class=DistillationTrainer, trainer_kwargs=dict(teacher=teacher, loss_fn=loss_fn))
    return trainer, teacher, student, catcher


def test_teacher_stays_frozen_and_the_student_learns(base, small_data, tmp_path):
    trainer, teacher, student, _ = _trainer(base, small_data, tmp_path, CombinedLoss(0.5, 0.5, 2.0), steps=3)
    before_t = {n: p.clone() for n, p in teacher.named_parameters()}
    before_s = {n: p.clone() for n, p in student.named_parameters()}
    teacher.train()  # the trainer must switch it back to eval mode itself
    trainer.train()
    assert not teacher.training
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(p, before_t[n]) for n, p in teacher.named_parameters())
    assert any(not torch.equal(p, before_s[n]) for n, p in student.named_parameters())
    logged = [r for r in trainer.state.log_history if "loss" in r]
    assert logged and all("ce" in r and "kl" in r and r["kl"] >= 0 for r in logged)
    assert trainer.teacher_seconds > 0 and trainer.teacher_tokens > 0


def test_loss_is_combined_loss_of_the_two_models(base, small_data, tmp_path):
    loss_fn = CombinedLoss(0.7, 0.3, 2.0)
    trainer, teacher, student, _ = _trainer(base, small_data, tmp_path, loss_fn)
    batch = trainer.data_collator([dict(e) for e in small_data.examples[:4]])
    student.eval()
    got = trainer.compute_loss(student, dict(batch))
    inputs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    want = CombinedLoss(0.7, 0.3, 2.0)(student(**inputs).logits, batch["labels"], teacher(**inputs).logits)
    torch.testing.assert_close(got, want)


def test_plain_ce_run_skips_the_teacher(base, small_data, tmp_path):
    trainer, *_ = _trainer(base, small_data, tmp_path, CombinedLoss(1.0, 0.0))
    trainer.train()
    assert trainer.teacher_seconds == 0.0


def test_accumulation_4x2_equals_batch_8(base, small_data, tmp_path):
    """The loss is normalised over the whole accumulated batch's tokens, as the Trainer's own loss is."""
    grads = []
    for per_device, acc in ((8, 1), (2, 4)):
        trainer, _, _, catcher = _trainer(base, small_data, tmp_path, CombinedLoss(0.7, 0.3, 2.0), per_device, acc,
                                          name=f"b{per_device}")
        trainer.train()
        grads.append(catcher.grads)
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6, msg=name)


def test_run_distillation_refuses_mismatched_models_and_label_smoothing(base, tmp_path):
    student, _ = shrink_model(base[0], num_hidden_layers=1, vocab_size=base[0].config.vocab_size + 8)
    cfg = FinetuneConfig(output_dir=str(tmp_path / "x"))
    with pytest.raises(ValueError, match="vocabulary"):
        run_distillation(cfg, student, base[0], base[1])
    other = copy.deepcopy(base[1])
    other.add_tokens(["<another>"])
    with pytest.raises(ValueError, match="tokenizers differ"):
        run_distillation(cfg, student, base[0], base[1], teacher_tokenizer=other)
    with pytest.raises(ConfigError, match="label_smoothing"):
        run_distillation(cfg.replace(label_smoothing=0.1), shrink_model(base[0], 1)[0], base[0], base[1])


def test_topk_kl_approaches_the_full_kl():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 9, 50, generator=g), torch.randn(2, 9, 50, generator=g) * 3
    labels = torch.randint(0, 50, (2, 9), generator=g)
    labels[0, :4] = -100
    full = CombinedLoss(0.0, 1.0, 2.0)
    full(student, labels, teacher)
    exact = topk_kl(student, labels, *topk_teacher(teacher, 50, torch.float32), temperature=2.0)
    torch.testing.assert_close(exact, full.last_kl)  # k = vocabulary: the same number
    errors = [abs(topk_kl(student, labels, *topk_teacher(teacher, k), temperature=2.0) - full.last_kl).item()
              for k in (5, 20, 40)]
    assert errors[0] > errors[1] > errors[2]
    assert topk_mass(teacher, 50) == pytest.approx(1.0)
    assert topk_mass(teacher, 5) < topk_mass(teacher, 20) < 1.0
    assert topk_bytes_per_token(32) == 192 and topk_bytes_per_token(128) == 768
    with pytest.raises(ValueError):
        topk_teacher(teacher, 51)

"""GRPO written out (dsnb.train.grpo) equals what TRL's GRPOTrainer computes on a fixed batch, to 1e-5: the
group-relative advantages, the per-token log-probs (at the sampling temperature), the reference's, the loss of
every loss_type with the clipped surrogate and the k3 KL, its gradient, and the KL and clip ratio TRL logs."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from dsnb.train import grpo as G
from dsnb.train.config import GRPO_LOSS_TYPES, FinetuneConfig
from dsnb.train.rewards import function_prompts, prompt_dataset, statement_share

GROUP, PROMPTS, TEMPERATURE, BETA = 4, 3, 0.7, 0.04


def test_group_advantages_by_definition():
    r = torch.tensor([1.0, 0.0, 0.5, 0.5, 2.0, 2.0, 2.0, 2.0])
    a = G.group_advantages(r, 4)
    first = r[:4]
    assert torch.allclose(a[:4], (first - first.mean()) / (first.std() + G.STD_EPS))
    assert torch.equal(a[4:], torch.zeros(4))  # a group whose completions all score the same teaches nothing
    assert torch.allclose(G.group_advantages(r, 4, "none"), r - r.view(2, 4).mean(1).repeat_interleave(4))
    assert torch.allclose(G.group_advantages(r, 4, "batch")[:4], (first - first.mean()) / (r.std() + G.STD_EPS))
    with pytest.raises(ValueError, match="multiple of group_size"):
        G.group_advantages(torch.ones(6), 4)


def test_k3_and_surrogate_by_definition():
    logp, ref = torch.tensor([-1.0, -2.0, -3.0]), torch.tensor([-1.5, -2.0, -1.0])
    kl = G.k3_kl(logp, ref)
    assert torch.allclose(kl, torch.exp(ref - logp) - (ref - logp) - 1) and kl[1] == 0 and (kl >= 0).all()
    old = torch.log(torch.tensor([[0.5, 0.5, 0.5]]))
    new = torch.log(torch.tensor([[0.75, 0.5, 0.3]]))  # ratios 1.5, 1.0, 0.6
    loss, ratio = G.clipped_surrogate(new, old, torch.tensor([1.0]), 0.2)
    assert torch.allclose(ratio, torch.tensor([[1.5, 1.0, 0.6]])) and torch.allclose(loss, -torch.tensor([[1.2, 1.0, 0.6]]))
    loss, _ = G.clipped_surrogate(new, old, torch.tensor([-1.0]), 0.2)
    assert torch.allclose(loss, torch.tensor([[1.5, 1.0, 0.8]]))  # pessimistic side: min of the two


@pytest.fixture(scope="module")
def fixed_batch(base, corpus, tmp_path_factory):
    """A LoRA GRPOTrainer on the base model, one generated batch, and the policy moved off it (so ρ ≠ 1)."""
    model, tokenizer = copy.deepcopy(base[0]), base[1]
    prompts = function_prompts(corpus, "validation", tokenizer, max_prompt_tokens=40, n=PROMPTS, seed=1)
    cfg = FinetuneConfig(stage="grpo", model="dsnb-tiny", method="lora", lora_r=4, lora_alpha=8, num_generations=GROUP,
                         per_device_batch_size=GROUP * PROMPTS, max_completion_length=12, max_seq_len=64,
                         temperature=TEMPERATURE, num_iterations=2, kl_coef=BETA, eval_steps=None, max_steps=2,
                         output_dir=str(tmp_path_factory.mktemp("grpo")))
    trainer = G.build_grpo_trainer(cfg, model, tokenizer, prompt_dataset(prompts), progress=False,
                                   reward_funcs=[statement_share])
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    torch.manual_seed(0)
    batch = trainer._generate_and_score_completions([{"prompt": p.prompt} for p in prompts for _ in range(GROUP)])
    rewards = torch.tensor(list(trainer._logs["rewards"]["statement_share"]))
    inputs = (batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"], batch["completion_mask"])
    with torch.no_grad():
        before = G.token_logps(trainer.model, *inputs, temperature=TEMPERATURE)
        with trainer.model.disable_adapter():
            reference = G.token_logps(trainer.model, *inputs, temperature=TEMPERATURE)
        g = torch.Generator().manual_seed(0)
        for name, p in trainer.model.named_parameters():  # a policy update's worth of change, larger than one step
            if "lora_B" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return trainer, batch, rewards, inputs, before, reference


def test_advantages_equal_trls(fixed_batch):
    trainer, batch, rewards, *_ = fixed_batch
    assert rewards.numel() == GROUP * PROMPTS and rewards.std() > 0, "the fixed batch needs rewards that differ"
    torch.testing.assert_close(G.group_advantages(rewards, GROUP), batch["advantages"], rtol=0, atol=1e-5)


def test_log_probs_equal_trls(fixed_batch):
    trainer, batch, rewards, inputs, before, reference = fixed_batch
    mask = batch["completion_mask"].bool()
    assert mask.float().mean() > 0.5
    torch.testing.assert_close(before[mask], batch["old_per_token_logps"][mask], rtol=0, atol=1e-5)
    torch.testing.assert_close(reference[mask], batch["ref_per_token_logps"][mask], rtol=0, atol=1e-5)


@pytest.mark.parametrize("loss_type", GRPO_LOSS_TYPES)
def test_loss_and_gradient_equal_trls(fixed_batch, loss_type):
    trainer, batch, rewards, inputs, *_ = fixed_batch
    trainer.loss_type = loss_type
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    trainer.model.zero_grad()
    theirs = trainer.compute_loss(trainer.model, batch)
    theirs.backward()
    their_grads = [p.grad.clone() for p in params]
    trainer.model.zero_grad()
    logps = G.token_logps(trainer.model, *inputs, temperature=TEMPERATURE)
    mine = G.grpo_loss(logps, batch["old_per_token_logps"], batch["ref_per_token_logps"],
                       G.group_advantages(rewards, GROUP), batch["completion_mask"], epsilon=trainer.epsilon_low,
                       beta=BETA, loss_type=loss_type, max_completion_length=trainer.max_completion_length,
                       tokens_in_batch=float(batch["num_items_in_batch"]))
    mine.loss.backward()
    assert math.isfinite(mine.loss.item()) and abs(mine.loss.item()) > 1e-4
    torch.testing.assert_close(mine.loss, theirs, rtol=0, atol=1e-5)
    for ours, their in zip((p.grad for p in params), their_grads, strict=True):
        torch.testing.assert_close(ours, their, rtol=1e-4, atol=1e-6)
    metrics = trainer._metrics["train"]
    assert abs(mine.kl - metrics["kl"][-1]) < 1e-5 and mine.kl > 0
    assert abs(mine.clip_ratio - metrics["clip_ratio/region_mean"][-1]) < 1e-6 and mine.clip_ratio > 0
    assert abs(mine.clip_low - metrics["clip_ratio/low_mean"][-1]) < 1e-6
    trainer.model.zero_grad()


def test_first_pass_has_ratio_one_and_only_the_kl_term_is_nonzero_without_advantages():
    logps = torch.tensor([[-1.0, -2.0], [-0.5, -0.1]], requires_grad=True)
    ref = torch.tensor([[-1.2, -2.0], [-0.4, -0.3]])
    mask = torch.ones(2, 2)
    out = G.grpo_loss(logps, None, ref, torch.zeros(2), mask, beta=0.1, loss_type="bnpo")
    assert torch.allclose(out.ratio, torch.ones(2, 2)) and out.clip_ratio == 0
    assert torch.allclose(out.loss, 0.1 * G.k3_kl(logps, ref).mean())
    out.loss.backward()
    assert logps.grad.abs().sum() > 0  # ρ = 1 in value but not in gradient: the KL pulls toward the reference

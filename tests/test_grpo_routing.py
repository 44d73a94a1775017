"""The routing probe (dsnb.train.routing_drift) on a short GRPO run of the tiny MoE: what it records is right by
construction (the first training pass uses the old pass's weights: no expert changes and ρ = 1 exactly; the
rollout's experts are read from generate's prefill and decoding calls), and router replay forces the recorded
experts (replaying a pass's own routing reproduces its log-probs)."""

from __future__ import annotations

import copy

import pytest
import torch

from dsnb.train.config import FinetuneConfig
from dsnb.train.grpo import run_grpo
from dsnb.train.rewards import function_prompts
from dsnb.train.routing_drift import RoutingProbe


@pytest.fixture(scope="module")
def probed(base, corpus, tmp_path_factory):
    model, tokenizer = copy.deepcopy(base[0]), base[1]
    prompts = function_prompts(corpus, "train", tokenizer, max_prompt_tokens=40, n=16, seed=0)
    cfg = FinetuneConfig(stage="grpo", model="dsnb-tiny", method="full", num_generations=4, per_device_batch_size=8,
                         max_completion_length=12, max_seq_len=64, num_iterations=2, kl_coef=0.0, max_steps=4,
                         learning_rate=3e-3, min_learning_rate=1e-4, warmup_steps=0, eval_steps=None, logging_steps=1,
                         output_dir=str(tmp_path_factory.mktemp("probe")))
    result = run_grpo(cfg, model=model, tokenizer=tokenizer, train_prompts=prompts, eval_prompts=[], progress=False,
                      attach=[RoutingProbe])
    probe = result.attached[0]
    yield result, probe
    probe.close()


def test_first_pass_matches_the_old_pass_exactly(probed):
    _, probe = probed
    first = [r for r in probe.records if r.step_pass == 1]
    assert len(first) == 2  # 4 steps, 2 passes per sampled batch
    assert all(r.differs_from_old == 0 and r.abs_log_ratio == 0 and r.differs_from_rollout == 0 for r in first)


def test_rollout_routing_is_read_from_generate(probed):
    _, probe = probed
    batch = probe._data[0]
    assert batch.rollout is not None and batch.rollout.shape == batch.old.shape
    assert batch.rollout.shape[2] == len(probe.routers) == 3 and batch.rollout.shape[3] == 2
    # same weights, KV-cached decoding vs one teacher-forced pass, fp32 on a CPU: the same experts everywhere
    assert probe.rollout_vs_old and all(s[0] == 0 for s in probe.rollout_vs_old)


def test_second_pass_after_an_update_moves_routing_and_ratios(probed):
    _, probe = probed
    second = [r for r in probe.records if r.step_pass == 2]
    assert second and all(r.abs_log_ratio > 0 for r in second)
    assert any(r.differs_from_old > 0 for r in second)  # full fine-tuning moves the routers themselves
    table = probe.table()
    assert [row["pass over the batch"] for row in table] == [1, 2]
    assert table[1]["|log ρ| with router replay"] is not None


def test_replaying_a_pass_own_routing_reproduces_it(probed):
    result, probe = probed
    model = result.model
    ids = torch.tensor([list(probe._data[-1].keys[0])])
    mask = torch.ones_like(ids)
    with torch.no_grad(), probe._recording() as calls:
        plain = model(input_ids=ids, attention_mask=mask).logits
    probe._force = [torch.cat(c) for c in calls]
    try:
        with torch.no_grad():
            replayed = model(input_ids=ids, attention_mask=mask).logits
        probe._force = [torch.flip(torch.cat(c), dims=[0]) for c in calls]  # other tokens' experts
        with torch.no_grad():
            other = model(input_ids=ids, attention_mask=mask).logits
    finally:
        probe._force = None
    torch.testing.assert_close(replayed, plain, rtol=0, atol=1e-5)
    assert not torch.allclose(other, plain, atol=1e-3)

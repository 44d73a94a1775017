"""sequence_logps and dpo_loss: hand-computed cases, transformers' loss, and TRL's DPOTrainer on the same batch."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from dsnb.train.losses import dpo_loss, sequence_logps


def test_sequence_logps_by_hand():
    # vocab of 2, logits chosen so that the log-probs are easy: log softmax([0, 0]) = log 0.5
    logits = torch.zeros(1, 4, 2)
    logits[0, 1] = torch.tensor([math.log(3.0), 0.0])  # position 1 scores token 2 at 3/4 for id 0
    labels = torch.tensor([[-100, 1, 0, 1]])  # position 0 (prompt) ignored; the shift drops labels[0]
    # scored: labels[1]=1 by logits[0] (1/2), labels[2]=0 by logits[1] (3/4), labels[3]=1 by logits[2] (1/2)
    want = math.log(0.5) + math.log(0.75) + math.log(0.5)
    assert sequence_logps(logits, labels).item() == pytest.approx(want, abs=1e-6)
    assert sequence_logps(logits, labels, average=True).item() == pytest.approx(want / 3, abs=1e-6)
    masked = torch.tensor([[-100, -100, -100, 1]])
    assert sequence_logps(logits, masked).item() == pytest.approx(math.log(0.5), abs=1e-6)


def test_sequence_logps_matches_transformers_loss():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=4))
    ids = torch.randint(0, 50, (1, 12))
    labels = ids.clone()
    labels[0, :5] = -100
    out = model(input_ids=ids, labels=labels)
    mean = sequence_logps(out.logits, labels, average=True)
    assert (-mean).item() == pytest.approx(out.loss.item(), abs=1e-5)


def test_shapes_must_agree():
    with pytest.raises(ValueError, match="share"):
        sequence_logps(torch.zeros(2, 5, 3), torch.zeros(2, 4, dtype=torch.long))


def test_dpo_loss_by_hand():
    pc, pr = torch.tensor([-1.0]), torch.tensor([-2.0])
    rc, rr = torch.tensor([-1.5]), torch.tensor([-1.5])
    # h = (−1 − −1.5) − (−2 − −1.5) = 0.5 + 0.5 = 1; loss = −log σ(0.1) = log(1 + e^−0.1)
    losses, chosen, rejected = dpo_loss(pc, pr, rc, rr, beta=0.1)
    assert losses.item() == pytest.approx(math.log(1 + math.exp(-0.1)), abs=1e-6)
    assert chosen.item() == pytest.approx(0.05) and rejected.item() == pytest.approx(-0.05)
    # conservative DPO: −0.8·log σ(0.1) − 0.2·log σ(−0.1)
    smooth, _, _ = dpo_loss(pc, pr, rc, rr, beta=0.1, label_smoothing=0.2)
    want = 0.8 * math.log(1 + math.exp(-0.1)) + 0.2 * math.log(1 + math.exp(0.1))
    assert smooth.item() == pytest.approx(want, abs=1e-6)
    # IPO: (h − 1/(2β))² = (1 − 5)² = 16
    ipo, _, _ = dpo_loss(pc, pr, rc, rr, beta=0.1, loss_type="ipo")
    assert ipo.item() == pytest.approx(16.0)


def test_dpo_loss_at_the_reference_is_log2_and_rewards_are_detached():
    p = torch.tensor([-3.0, -7.0], requires_grad=True)
    losses, chosen, rejected = dpo_loss(p, p.flip(0), p.detach(), p.detach().flip(0), beta=0.5)
    assert torch.allclose(losses, torch.full((2,), math.log(2.0)))
    assert not chosen.requires_grad and not rejected.requires_grad
    losses.sum().backward()
    # d/dh of −log σ(βh) at h = 0 is −β/2: chosen log-probs are pushed up, rejected down
    assert torch.allclose(p.grad, torch.tensor([-0.25 + 0.25, 0.25 - 0.25]))


def test_dpo_loss_checks_its_arguments():
    x = torch.zeros(1)
    with pytest.raises(ValueError, match="loss_type"):
        dpo_loss(x, x, x, x, loss_type="hinge2")
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(x, x, x, x, beta=0.0)
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(x, x, x, x, label_smoothing=0.5)


def _pairs(n: int = 4) -> list[dict]:
    return [{"prompt": [{"role": "user", "content": f"Summarize this Python function in one line.\ndef f{i}(x):"}],
             "chosen": [{"role": "assistant", "content": "Return the absolute value of x."}],
             "rejected": [{"role": "assistant", "content": "Open a file" + " now" * i}]} for i in range(n)]


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_trl_dpo_trainer_loss_equals_ours(base_dir, tokenizer, tmp_path, loss_type):
    """TRL computes the loss (its own fused log-probs) on a batch; ours on the same batch agrees to 1e-5."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    policy = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    ref = copy.deepcopy(policy)
    torch.manual_seed(0)
    with torch.no_grad():  # a reference that differs from the policy, so the loss is not log 2
        for p in ref.parameters():
            p.add_(0.02 * torch.randn_like(p))
    args = DPOConfig(output_dir=str(tmp_path), beta=0.1, loss_type=[loss_type], per_device_train_batch_size=4,
                     report_to="none", use_cpu=True, router_aux_loss_coef=0.0, activation_checkpointing=False,
                     bf16=False, max_length=128)
    trainer = DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=Dataset.from_list(_pairs()),
                         processing_class=tokenizer)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    trainer.model.train()
    trl_loss = trainer.compute_loss(trainer.model, batch).item()

    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    kwargs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    average = loss_type == "ipo"  # TRL's IPO is normalised by completion length
    with torch.no_grad():
        pol = sequence_logps(policy(**kwargs).logits, labels, average=average)
        rf = sequence_logps(ref(**kwargs).logits, labels, average=average)
    losses, chosen, rejected = dpo_loss(*pol.chunk(2), *rf.chunk(2), beta=0.1, loss_type=loss_type)
    assert losses.mean().item() == pytest.approx(trl_loss, abs=1e-5)
    assert trl_loss != pytest.approx(math.log(2), abs=1e-3)
    if loss_type == "sigmoid":  # TRL's logged rewards are unnormalised: compare them for the sigmoid loss
        metrics = trainer._metrics["train"]
        assert chosen.mean().item() == pytest.approx(metrics["rewards/chosen"][-1], abs=1e-5)
        assert rejected.mean().item() == pytest.approx(metrics["rewards/rejected"][-1], abs=1e-5)
        assert (chosen > rejected).float().mean().item() == pytest.approx(metrics["rewards/accuracies"][-1])

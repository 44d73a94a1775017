"""Adversarial training on the input embeddings (notebook 05): the FGSM/FGM formulas, the Trainer step equal to
the from-scratch one, embedding weights untouched (also when the step raises), LoRA and accumulation."""

from __future__ import annotations

import pytest
import torch

from dsnb.train.adversarial import (
    AdversarialSettings,
    fgm_delta,
    fgsm_delta,
    input_embeddings,
    perturbed_loss,
    settings_from_config,
)
from dsnb.train.chat import build_sft_data, data_collator, to_dataset
from dsnb.train.config import ConfigError, FinetuneConfig
from dsnb.train.sft import build_trainer


@pytest.fixture(scope="module")
def data(corpus, tokenizer):
    return build_sft_data(corpus.pairs_in("train"), tokenizer, limit=16, max_seq_len=64)


@pytest.fixture()
def model(base_dir):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)


def _batch(tokenizer, data, n=4):
    return data_collator(tokenizer)([dict(e) for e in data.examples[:n]])


def _trainer(model, tokenizer, data, tmp_path, **cfg):
    c = FinetuneConfig(max_steps=2, per_device_batch_size=4, eval_steps=None, output_dir=str(tmp_path), **cfg)
    trainer = build_trainer(c, model, tokenizer, to_dataset(data.examples), progress=False)
    trainer.current_gradient_accumulation_steps = 1  # set by train(); these tests call training_step directly
    return trainer


def test_formulas():
    g = torch.tensor([[[0.3, -4.0], [0.0, 1.0]], [[2.0, 0.0], [0.0, 0.0]]])
    assert torch.equal(fgsm_delta(g, 0.01), 0.01 * torch.tensor([[[1.0, -1], [0, 1]], [[1, 0], [0, 0]]]))
    d = fgm_delta(g, 0.01)
    assert torch.allclose(d.flatten(1).norm(dim=1), torch.tensor([0.01, 0.01]))
    assert torch.equal(fgm_delta(torch.zeros(1, 2, 2), 0.1), torch.zeros(1, 2, 2))
    assert settings_from_config(FinetuneConfig()) is None
    assert settings_from_config(FinetuneConfig(adversarial="fgm")) == AdversarialSettings("fgm", 0.01, 1)
    with pytest.raises(ConfigError, match="use one of"):
        AdversarialSettings("fgx")


@pytest.mark.parametrize("method", ["fgsm", "fgm"])
def test_trainer_step_equals_the_from_scratch_step(model, tokenizer, data, tmp_path, method):
    batch = _batch(tokenizer, data)
    eps = 0.05
    # from scratch: gradient of the clean loss + gradient of the loss on perturbed input embeddings
    emb = model.get_input_embeddings()(batch["input_ids"]).detach().requires_grad_()
    model.train()
    clean = model(inputs_embeds=emb, attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    (g,) = torch.autograd.grad(clean, emb, retain_graph=True)
    delta = eps * g.sign() if method == "fgsm" else eps * g / g.flatten(1).norm(dim=1)[:, None, None]
    adv = model(inputs_embeds=emb.detach() + delta, attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    params = [p for p in model.parameters() if p.requires_grad]
    expected = torch.autograd.grad(clean + adv, params, allow_unused=True)

    trainer = _trainer(model, tokenizer, data, tmp_path, adversarial=method, adversarial_epsilon=eps)
    before = input_embeddings(model).weight.detach().clone()
    model.zero_grad()
    loss = trainer.training_step(model, dict(batch))
    assert torch.equal(input_embeddings(model).weight, before)  # no optimizer step: bit-identical
    assert loss.item() == pytest.approx(clean.item(), rel=1e-5)  # the logged loss is the clean one
    for p, e in zip(params, expected, strict=True):
        if e is not None:
            torch.testing.assert_close(p.grad, e, rtol=1e-4, atol=1e-6)
    assert not input_embeddings(model)._forward_hooks


def test_weights_restored_when_the_step_raises(model, tokenizer, data, tmp_path):
    trainer = _trainer(model, tokenizer, data, tmp_path, adversarial="fgsm")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    calls = {"n": 0}

    def boom(_module, _inputs, _output):
        calls["n"] += 1
        if calls["n"] == 2:  # the adversarial forward pass
            raise RuntimeError("out of memory (simulated)")

    handle = model.model.layers[-1].register_forward_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="simulated"):
            trainer.training_step(model, dict(_batch(tokenizer, data)))
    finally:
        handle.remove()
    assert calls["n"] == 2
    assert not input_embeddings(model)._forward_hooks  # the perturbation hook is gone
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_training_with_accumulation_leaves_frozen_embeddings_bit_identical(model, tokenizer, data, tmp_path):
    """A full Trainer run (2 steps x 2 micro-batches) with FGSM and frozen embeddings: the optimizer never touches
    them, so any change would come from the perturbation; the trained layers do move."""
    cfg = dict(adversarial="fgsm", freeze_first_layers=1, gradient_accumulation_steps=2, per_device_batch_size=2)
    c = FinetuneConfig(max_steps=2, eval_steps=None, output_dir=str(tmp_path), logging_steps=1, **cfg)
    from dsnb.train.trainable import prepare_model

    model, _ = prepare_model(model, c)
    emb = input_embeddings(model).weight.detach().clone()
    head = model.lm_head.weight.detach().clone()
    trainer = build_trainer(c, model, tokenizer, to_dataset(data.examples), progress=False)
    trainer.train()
    assert torch.equal(input_embeddings(model).weight, emb)
    assert not torch.equal(model.lm_head.weight, head)


def test_lora_and_pgd(model, tokenizer, data, tmp_path):
    from dsnb.model.lora import apply_lora

    peft_model = apply_lora(model, r=4)
    batch = _batch(tokenizer, data)
    for method, steps in (("fgsm", 1), ("pgd", 3)):
        trainer = _trainer(peft_model, tokenizer, data, tmp_path, method="lora", adversarial=method,
                           adversarial_steps=steps)
        peft_model.zero_grad()
        trainer.training_step(peft_model, dict(batch))
        grads = [p.grad for p in peft_model.parameters() if p.requires_grad]
        assert grads and all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    assert not input_embeddings(peft_model)._forward_hooks


def test_perturbed_loss_is_higher(model, tokenizer, data):
    batch = _batch(tokenizer, data, 8)
    w = {k: v.clone() for k, v in model.state_dict().items()}
    clean, attacked = perturbed_loss(model, batch, "fgsm", 0.05)
    assert attacked > clean
    assert all(torch.equal(v, w[k]) for k, v in model.state_dict().items())

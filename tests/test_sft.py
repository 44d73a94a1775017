"""SFT core: completion-only labels, packing, batch planning, LoRA/freezing, accumulation equivalence."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import TrainerCallback

from dsnb.train.chat import build_sft_data, chat_messages, pack_examples, to_dataset, tokenize_chat
from dsnb.train.config import (
    BatchSizeError,
    ConfigError,
    FinetuneConfig,
    effective_batch,
    plan_batch,
    resolve_precision,
)
from dsnb.train.schedules import warmup_linear_floor_lr
from dsnb.train.sft import build_trainer
from dsnb.train.speed import training_state_bytes
from dsnb.train.trainable import (
    freeze_first_layers,
    moe_block_classes,
    prepare_model,
    set_dropout,
)


@pytest.fixture(scope="module")
def small_data(corpus, tokenizer):
    return build_sft_data(corpus.pairs_in("train"), tokenizer, limit=64, max_seq_len=96)


def test_labels_cover_exactly_the_answer(corpus, tokenizer):
    pair = corpus.pairs_in("train")[0]
    msgs = chat_messages(pair, "summary")
    enc = tokenize_chat(msgs, tokenizer)
    answer = [t for t, lab in zip(enc["input_ids"], enc["labels"], strict=True) if lab != -100]
    assert tokenizer.decode(answer) == pair.summary + tokenizer.eos_token
    # everything before the answer is masked, and the prompt is a prefix of the full conversation
    first = next(i for i, lab in enumerate(enc["labels"]) if lab != -100)
    assert all(lab == -100 for lab in enc["labels"][:first])
    assert enc["input_ids"][0] == tokenizer.bos_token_id


def test_next_line_task_is_deterministic(corpus, tmp_path):
    """The same next-line examples in two fresh processes with different string-hash seeds (no hash() of str)."""
    import json
    import os
    import pickle
    import subprocess
    import sys

    (tmp_path / "pairs.pkl").write_bytes(pickle.dumps(corpus.pairs_in("train")[:50]))
    code = ("import json, pickle, sys\nfrom dsnb.train.chat import chat_messages\n"
            "pairs = pickle.loads(open(sys.argv[1], 'rb').read())\n"
            "print(json.dumps([chat_messages(p, 'next_line') for p in pairs]))\n")
    runs = [json.loads(subprocess.run([sys.executable, "-c", code, str(tmp_path / "pairs.pkl")], check=True,
                                      env={**os.environ, "PYTHONHASHSEED": seed}, capture_output=True, text=True,
                                      timeout=300).stdout)
            for seed in ("1", "2")]
    assert runs[0] == runs[1]
    made = [m for m in runs[0] if m is not None]
    assert made and all(m[-1]["content"].strip() for m in made)


def test_build_reports_what_it_removed(corpus, tokenizer):
    data = build_sft_data(corpus.pairs_in("validation"), tokenizer, max_seq_len=48)
    assert data.removed["longer than max_seq_len"] > 0
    assert all(len(e["input_ids"]) <= 48 for e in data.examples)
    rep = data.report()
    assert rep["examples"] == len(data) and rep["label tokens"] < rep["tokens"]


def test_dialogue_task_trains_on_the_cleaned_conversations(corpus, tokenizer):
    """The 'dialogue' task takes notebook 02's conversations as they are: only the assistant turn is in the loss."""
    chats = [[{"role": "user", "content": "What is the purpose of parse_qs?"},
              {"role": "assistant", "content": "parse_qs parses a query string."}],
             [{"role": "user", "content": "x " * 200}, {"role": "assistant", "content": "too long"}]]
    data = build_sft_data(corpus.pairs_in("train")[:5], tokenizer, ("summary", "dialogue"), max_seq_len=96,
                          dialogues=chats)
    assert data.tasks.count("dialogue") == 1 and data.removed["longer than max_seq_len"] == 1
    enc = data.examples[data.tasks.index("dialogue")]
    answer = [t for t, lab in zip(enc["input_ids"], enc["labels"], strict=True) if lab != -100]
    assert tokenizer.decode(answer) == "parse_qs parses a query string." + tokenizer.eos_token
    with pytest.raises(ConfigError, match="needs conversations"):
        build_sft_data(corpus.pairs_in("train")[:5], tokenizer, ("dialogue",))


def test_packing_keeps_every_label(small_data):
    packed = pack_examples(small_data.examples, 128)
    assert len(packed) < len(small_data.examples)
    assert all(len(p["input_ids"]) <= 128 for p in packed)
    flat = [t for p in packed for t in p["labels"]]
    assert flat == [t for e in small_data.examples for t in e["labels"]]


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_padding_free_packing_keeps_examples_apart(base, small_data, tokenizer, attention):
    """Packing (one row, positions restarting per example) gives the padded batch's loss; the same row
    without the restarts lets examples attend to each other and the loss changes."""
    from dsnb.train.chat import data_collator

    model = copy.deepcopy(base[0])
    model.set_attn_implementation(attention)
    examples = [dict(e) for e in small_data.examples[:6]]
    padded = data_collator(tokenizer)(examples)
    flat = data_collator(tokenizer, packing=True)(examples)
    assert flat["input_ids"].shape[0] == 1 and "attention_mask" not in flat
    assert flat["input_ids"].shape[1] == sum(len(e["input_ids"]) for e in examples) < padded["input_ids"].numel()
    with torch.no_grad():
        loss_padded = model(**padded).loss
        loss_packed = model(**flat).loss
        loss_leaky = model(input_ids=flat["input_ids"], labels=flat["labels"]).loss
    torch.testing.assert_close(loss_packed, loss_padded, rtol=1e-5, atol=1e-5)
    assert abs(loss_leaky - loss_padded) > 1e-3


def test_batch_planning():
    assert effective_batch(2, 4, 1) == effective_batch(4, 1, 2) == 8
    assert plan_batch(8, 2, 1) == 4
    assert plan_batch(8, 2, 2) == 2
    with pytest.raises(BatchSizeError, match="multiple of the 2 processes"):
        plan_batch(7, 1, 2)
    with pytest.raises(BatchSizeError, match="per_device_batch_size"):
        plan_batch(12, 4, 2)
    cfg = FinetuneConfig(global_batch_size=8, per_device_batch_size=2)
    assert cfg.accumulation_for(1) == 4 and cfg.accumulation_for(4) == 1


def test_config_validation(tmp_path):
    with pytest.raises(ConfigError, match="unknown config keys"):
        FinetuneConfig.from_dict({"lerning_rate": 1.0})
    with pytest.raises(ConfigError):
        FinetuneConfig(method="qlora")
    with pytest.raises(ConfigError):
        FinetuneConfig(learning_rate=1e-6, min_learning_rate=1e-5)
    with pytest.raises(ConfigError, match="does not exist"):
        FinetuneConfig.from_yaml(tmp_path / "missing.yaml")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("learning_rate: 1e-5\nmin_learning_rate: 1e-7\n")  # strings to YAML 1.1
    assert FinetuneConfig.from_yaml(recipe).learning_rate == 1e-5
    with pytest.raises(ConfigError, match="expected a number"):
        FinetuneConfig(learning_rate="fast")
    assert resolve_precision("fp32") == "fp32"
    if not torch.cuda.is_available():
        assert resolve_precision("auto") == "fp32"
        with pytest.raises(ConfigError, match="CUDA"):
            resolve_precision("fp16")


def test_training_arguments_map_one_to_one(tmp_path):
    cfg = FinetuneConfig(output_dir=str(tmp_path), max_steps=100, learning_rate=3e-5, min_learning_rate=1e-6,
                         per_device_batch_size=4, gradient_accumulation_steps=2, label_smoothing=0.1,
                         gradient_checkpointing=True)
    args = cfg.training_arguments(processes=1)
    assert args.per_device_train_batch_size == 4 and args.gradient_accumulation_steps == 2
    assert args.learning_rate == 3e-5 and args.label_smoothing_factor == 0.1
    assert args.lr_scheduler_type == "polynomial" and args.lr_scheduler_kwargs["lr_end"] == 1e-6
    assert args.warmup_steps == 5  # 500/10000 of 100 steps
    assert args.activation_checkpointing


def test_lora_and_freezing(base):
    model, _ = base
    lora_model, info = prepare_model(copy.deepcopy(model), FinetuneConfig(method="lora"))
    assert 0 < info["trainable"] < 0.2 * info["total"]
    names = [n for n, p in lora_model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    assert not any(".experts." in n for n in names)  # MoE routed experts stay untouched by default
    assert any(".layers.0.mlp.gate_proj." in n for n in names)  # the dense MLP of the first layer
    assert any(".shared_experts.down_proj." in n for n in names)  # and the shared experts
    experts, info_e = prepare_model(copy.deepcopy(model), FinetuneConfig(method="lora", lora_experts=True))
    assert info_e["trainable"] > info["trainable"]
    assert any(".experts." in n for n, p in experts.named_parameters() if p.requires_grad)
    frozen_model = copy.deepcopy(model)
    frozen = freeze_first_layers(frozen_model, 2)
    assert any(".layers.1." in n for n in frozen) and not any(".layers.2." in n for n in frozen)
    assert frozen_model.num_parameters(only_trainable=True) < frozen_model.num_parameters()
    with pytest.raises(ConfigError):
        freeze_first_layers(copy.deepcopy(model), 99)
    with pytest.raises(ConfigError, match="expects a 'llama'"):
        prepare_model(model, FinetuneConfig(model_type="llama"))


def test_dropout_override_and_moe_blocks(base):
    model = copy.deepcopy(base[0])
    set_dropout(model, 0.2)
    assert model.config.attention_dropout == 0.2
    assert [c.__name__ for c in moe_block_classes(model)] == ["DeepseekV3MoE"]


class _GradCatcher(TrainerCallback):
    def __init__(self, model):
        self.model = model
        self.grads = None
        self.losses = []

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.grads is None:
            self.grads = {n: p.grad.detach().clone() for n, p in self.model.named_parameters() if p.grad is not None}


def _first_step_grads(base, data, tmp_path, per_device, accumulation):
    model = copy.deepcopy(base[0])
    cfg = FinetuneConfig(output_dir=str(tmp_path / f"b{per_device}"), max_steps=1, eval_steps=None,
                         per_device_batch_size=per_device, gradient_accumulation_steps=accumulation,
                         max_grad_norm=0.0)
    catcher = _GradCatcher(model)
    trainer = build_trainer(cfg, model, base[1], to_dataset(data.examples), callbacks=[catcher], progress=False)
    trainer.train()
    return catcher.grads


def test_accumulation_4x2_equals_batch_8(base, small_data, tmp_path):
    """Claim C14: with token-count normalisation over the whole accumulated batch, the gradients agree."""
    big = _first_step_grads(base, small_data, tmp_path, 8, 1)
    acc = _first_step_grads(base, small_data, tmp_path, 2, 4)
    assert big.keys() == acc.keys() and big
    for name in big:
        torch.testing.assert_close(acc[name], big[name], rtol=1e-4, atol=1e-6, msg=name)


def test_micro_batches_differ_in_answer_tokens(small_data):
    """Why the normalisation matters: averaging per-micro-batch means would weight tokens unequally."""
    counts = [sum(sum(t != -100 for t in e["labels"][1:]) for e in small_data.examples[i:i + 2]) for i in range(0, 8, 2)]
    assert len(set(counts)) > 1


def test_trainer_lr_follows_the_schedule(base, small_data, tmp_path):
    model = copy.deepcopy(base[0])
    cfg = FinetuneConfig(output_dir=str(tmp_path), max_steps=8, eval_steps=None, logging_steps=1,
                         per_device_batch_size=2, learning_rate=1e-3, min_learning_rate=1e-5, warmup_steps=3)
    trainer = build_trainer(cfg, model, base[1], to_dataset(small_data.examples), progress=False)
    trainer.train()
    logged = [(r["step"], r["learning_rate"]) for r in trainer.state.log_history if "learning_rate" in r]
    for step, lr in logged:  # the LR logged at step s was used for optimizer step s-1
        assert lr == pytest.approx(warmup_linear_floor_lr(step - 1, 1e-3, 3, 8, 1e-5), rel=1e-6)


def test_training_state_bytes_equal_the_real_tensors_after_a_step(base):
    """What notebook 03's weights+grads+AdamW column counts is what exists after an AdamW step (LoRA too)."""
    from dsnb.plan.measure import measure_model_state_bytes

    for cfg in (FinetuneConfig(), FinetuneConfig(method="lora")):
        model, _ = prepare_model(copy.deepcopy(base[0]), cfg)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        ids = torch.randint(0, 4096, (2, 16))
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        real = measure_model_state_bytes(model, opt)
        counted = training_state_bytes(model)
        assert counted["weights"] == real["weights"] and counted["gradients"] == real["gradients"]
        assert counted["optimizer"] == real["optimizer_states"]


def test_measure_training_step_sees_checkpointing_and_accumulation(base, small_data):
    from dsnb.train.chat import data_collator
    from dsnb.train.speed import measure_training_step

    model = copy.deepcopy(base[0])
    batch = data_collator(base[1])([dict(e) for e in small_data.examples[:8]])
    plain = measure_training_step(model, batch, "fp32", repeats=1)
    ckpt = measure_training_step(model, batch, "fp32", gradient_checkpointing=True, repeats=1)
    acc = measure_training_step(model, batch, "fp32", accumulation=2, repeats=1)
    assert ckpt["activation MB"] < 0.5 * plain["activation MB"]
    assert 0.4 < acc["activation MB"] / plain["activation MB"] < 0.6  # one micro-batch of half the size
    assert plain["seconds/step"] > 0 and not model.is_activation_checkpointing


def test_share_query_key_ties_where_the_architecture_allows(base, tokenizer, tmp_path):
    from dsnb.model.load import load_model, save_tiny_random
    from dsnb.train.speed import share_query_key

    llama, _ = load_model(save_tiny_random("llama", tmp_path / "llama", tokenizer=tokenizer))
    before = llama.num_parameters()
    saved = share_query_key(llama)
    cfg = llama.config
    assert saved == cfg.hidden_size**2 * cfg.num_hidden_layers == before - llama.num_parameters()
    attn = llama.model.layers[0].self_attn
    assert attn.k_proj.weight is attn.q_proj.weight
    with pytest.raises(ValueError, match="MLA"):
        share_query_key(copy.deepcopy(base[0]))
    qwen, _ = load_model(save_tiny_random("qwen2", tmp_path / "qwen2", tokenizer=tokenizer))
    with pytest.raises(ValueError, match="grouped-query"):
        share_query_key(qwen)


def test_early_stopping_stops_when_eval_loss_rises(base, small_data, tmp_path):
    """Notebook 11's control: with patience 1, a learning rate that makes the eval loss worse stops training."""
    model = copy.deepcopy(base[0])
    cfg = FinetuneConfig(output_dir=str(tmp_path), max_steps=40, eval_steps=2, early_stopping_patience=1,
                         per_device_batch_size=4, learning_rate=0.5, min_learning_rate=0.4, warmup_steps=0)
    ds = to_dataset(small_data.examples)
    trainer = build_trainer(cfg, model, base[1], ds, eval_dataset=to_dataset(small_data.examples[:8]), progress=False)
    trainer.train()
    assert trainer.state.global_step < 40


def test_router_bias_moves_only_when_asked_and_only_in_full_fine_tuning(base, small_data, tmp_path, caplog):
    from dsnb.model.routing import ExpertBiasBalancer, routers

    def bias_after(**changes):
        model = copy.deepcopy(base[0])
        before = [r.e_score_correction_bias.clone() for _, r in routers(model)]
        cfg = FinetuneConfig(output_dir=str(tmp_path / str(len(changes))), max_steps=3, eval_steps=None,
                             per_device_batch_size=4, save_steps=None, **changes)
        trainer = build_trainer(cfg, model, base[1], to_dataset(small_data.examples), progress=False)
        trainer.train()
        moved = any(not torch.equal(b, r.e_score_correction_bias) for b, (_, r) in zip(before, routers(
            trainer.model), strict=True))
        return moved, any(isinstance(c, ExpertBiasBalancer) for c in trainer.callback_handler.callbacks)

    assert bias_after() == (False, False)  # the default keeps the bias fixed, like a plain Trainer
    assert bias_after(bias_update_rate=0.01) == (True, True)
    with caplog.at_level("WARNING", logger="dsnb.train.sft"):
        assert bias_after(method="lora", bias_update_rate=0.01) == (False, False)
    assert "ignored with method='lora'" in caplog.text
    with pytest.raises(ConfigError, match="bias_update_rate"):
        FinetuneConfig(bias_update_rate=-0.1)

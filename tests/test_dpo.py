"""DPO with TRL (dsnb.train.dpo): LoRA reference = adapters off, TRL's loss = ours, metrics, the recipe CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dsnb.data.preference import build_pairs, preference_dataset
from dsnb.train.config import ConfigError, FinetuneConfig
from dsnb.train.dpo import (
    batches,
    build_dpo_trainer,
    completion_kl,
    dpo_arguments,
    dpo_memory,
    head_to_head,
    pair_logps,
    preference_metrics,
)
from dsnb.train.losses import dpo_loss, sequence_logps

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "configs" / "dpo" / "tiny.yaml"


def _cfg(tmp_path, **changes) -> FinetuneConfig:
    values = dict(stage="dpo", method="lora", lora_r=4, lora_alpha=8, beta=0.1, max_seq_len=96, max_steps=2,
                  per_device_batch_size=4, learning_rate=1e-3, min_learning_rate=1e-5, eval_steps=None,
                  logging_steps=1, output_dir=str(tmp_path / "run"))
    return FinetuneConfig(**{**values, **changes})


@pytest.fixture(scope="module")
def pairs(corpus):
    return build_pairs(corpus.pairs_in("train")[:8], ("other_summary", "truncated"))


def test_config_fields_reach_trl(tmp_path):
    args = dpo_arguments(_cfg(tmp_path, beta=0.25, dpo_loss_type="ipo"))
    assert (args.beta, args.loss_type, args.max_length) == (0.25, ["ipo"], 96)
    assert args.activation_checkpointing is False and args.router_aux_loss_coef == 0.0
    assert args.lr_scheduler_type == "polynomial" and args.learning_rate == 1e-3
    with pytest.raises(ConfigError, match="stage"):
        FinetuneConfig(stage="rlhf")
    with pytest.raises(ConfigError, match="beta"):
        FinetuneConfig(stage="dpo", beta=-1.0)


def test_lora_reference_is_the_adapter_disabled_model_and_trl_agrees(base_dir, tokenizer, pairs, tmp_path):
    from dsnb.model.load import load_model

    model, _ = load_model(base_dir, dtype=torch.float32)
    trainer = build_dpo_trainer(_cfg(tmp_path), model, tokenizer, preference_dataset(pairs), progress=False)
    peft_model = trainer.model
    assert trainer.ref_model is None and list(peft_model.peft_config) == ["default"]  # no second copy
    trained = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trained and all(".lora_" in n for n in trained)
    # the adapters start at zero (B = 0): policy = reference, every pair's loss is log 2 and KL is 0
    batch = next(batches(trainer, batch_size=4))
    assert completion_kl(peft_model, iter([batch])) == pytest.approx(0.0, abs=1e-6)
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    peft_model.train()
    trl_loss = trainer.compute_loss(peft_model, batch).item()
    logps = pair_logps(peft_model, True, iter([batch]))
    ours = preference_metrics(logps, beta=0.1)
    assert ours["dpo loss"] == pytest.approx(trl_loss, abs=1e-5)
    assert trl_loss != pytest.approx(math.log(2), abs=1e-4)
    assert ours["chosen reward"] == pytest.approx(trainer._metrics["train"]["rewards/chosen"][-1], abs=1e-5)
    assert completion_kl(peft_model, iter([batch])) > 0
    # the reference really is the base network: same log-probs as the model without adapters
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    base = peft_model.get_base_model()
    with torch.no_grad(), peft_model.disable_adapter():
        plain = sequence_logps(base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                               labels)
    assert torch.allclose(torch.cat([logps["ref_chosen"], logps["ref_rejected"]]), plain, atol=1e-5)


def test_preference_metrics_by_hand():
    logps = {"chosen": torch.tensor([-1.0, -4.0]), "rejected": torch.tensor([-2.0, -3.0]),
             "ref_chosen": torch.tensor([-1.5, -4.0]), "ref_rejected": torch.tensor([-1.5, -3.5])}
    m = preference_metrics(logps, beta=1.0)
    # rewards: chosen (0.5, 0), rejected (−0.5, 0.5): first pair right, second wrong
    assert m["reward accuracy"] == 0.5 and m["reward margin"] == pytest.approx((1.0 - 0.5) / 2)
    assert m["log-prob preference accuracy"] == 0.5
    want = dpo_loss(*logps.values(), beta=1.0)[0].mean().item()
    assert m["dpo loss"] == pytest.approx(want)


def test_head_to_head_by_hand():
    refs = ["return the size", "open a file", "close it"]
    first = ["return the size", "open", "nothing"]
    second = ["return size", "open a file", "nothing"]
    h = head_to_head(first, second, refs)
    assert (h["wins"], h["ties"], h["losses"]) == (1, 1, 1) and h["win rate"] == 0.5
    with pytest.raises(ValueError):
        head_to_head(first, second[:2], refs)


def test_dpo_memory_reference_copy():
    from dsnb.plan.memory import GiB
    from dsnb.plan.shape import as_shape

    lora = dpo_memory("deepseek-coder-1.3b-base", method="lora")
    full = dpo_memory("deepseek-coder-1.3b-base", method="full")
    assert lora["reference weights"] == 0
    assert full["reference weights"] == pytest.approx(as_shape("deepseek-coder-1.3b-base").parameter_count() * 2 / GiB)
    assert full["total"] > lora["total"]


def test_cli_runs_a_dpo_recipe_and_resumes(base_dir, tmp_path):
    out = tmp_path / "dpo"
    sets = dict(model=base_dir, max_steps=2, train_examples=24, eval_examples=8, eval_steps="null", save_steps=2,
                per_device_batch_size=4, logging_steps=1, output_dir=out, compress_checkpoints="true")
    args = [x for k, v in sets.items() for x in ("--set", f"{k}={v}")]
    proc = subprocess.run([sys.executable, "-m", "dsnb.train", str(TINY), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads((out / "results.json").read_text())
    assert r["config"]["stage"] == "dpo" and r["steps"] == 2 and r["reference"] == "adapters disabled"
    assert r["train pairs"] > 0 and sum(v for k, v in r.items() if k.startswith("mix ")) == r["train pairs"]
    assert any("rewards/accuracies" in row for row in r["log_history"])
    assert (out / "final" / "adapter_config.json").is_file()
    assert (out / "checkpoint-2" / "manifest.json").is_file()
    assert "dpo: step 2/2" in proc.stdout  # progress lines go to stdout (dsnb.progress)
    again = subprocess.run([sys.executable, "-m", "dsnb.train", str(TINY), *args,
                            "--set", "max_steps=3", "--resume", "auto"], cwd=ROOT, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    r2 = json.loads((out / "results.json").read_text())
    assert r2["steps"] == 3 and r2["resumed_from"]


DPO_RECIPES = sorted((ROOT / "configs" / "dpo").glob("*.yaml"))


@pytest.mark.parametrize("path", DPO_RECIPES, ids=lambda p: p.name)
def test_dpo_recipe_parses(path):
    cfg = FinetuneConfig.from_yaml(path)
    assert cfg.stage == "dpo" and cfg.model_type is not None
    cfg.accumulation_for(1)  # one GPU (or one CPU)


@pytest.mark.parametrize("path", [p for p in DPO_RECIPES if p.stem != "tiny"], ids=lambda p: p.name)
def test_real_dpo_recipe_runs_first_steps_on_tiny_stand_in(path, tmp_path, tokenizer, corpus):
    from dsnb.model.load import save_tiny_random
    from dsnb.train.dpo import run_dpo

    cfg = FinetuneConfig.from_yaml(path)
    model_dir = save_tiny_random(cfg.model_type, tmp_path / "model", tokenizer=tokenizer)
    small = cfg.replace(model=str(model_dir), output_dir=str(tmp_path / "out"), max_steps=2, eval_steps=None,
                        save_steps=None, precision="fp32", global_batch_size=None, per_device_batch_size=2,
                        gradient_accumulation_steps=1, gradient_checkpointing=False, train_examples=12,
                        eval_examples=4, max_seq_len=96, warmup_steps=1)
    result = run_dpo(small, corpus=corpus, progress=False)
    assert result.info["steps"] == 2 and result.info["reference"] == "adapters disabled"
    assert 0 < result.info["trainable"] < result.info["total"]

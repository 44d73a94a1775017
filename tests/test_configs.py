"""Every shipped config parses; the real-model recipes run their first steps on a tiny local stand-in."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dsnb.train.config import FinetuneConfig
from dsnb.train.sft import run_sft

ROOT = Path(__file__).resolve().parent.parent
SFT = sorted((ROOT / "configs" / "sft").glob("*.yaml"))
ACCEL = sorted((ROOT / "configs" / "accelerate").glob("*.yaml"))


def test_configs_exist():
    assert len(SFT) >= 3 and {p.stem for p in ACCEL} >= {"ddp", "fsdp", "deepspeed_zero3"}


@pytest.mark.parametrize("path", SFT, ids=lambda p: p.name)
def test_sft_recipe_parses(path):
    cfg = FinetuneConfig.from_yaml(path)
    assert cfg.model_type is not None, "recipes name the architecture they expect"
    processes = 8 if "8gpu" in path.stem else 1
    cfg.accumulation_for(processes)  # the batch plan works for the GPUs the recipe is for


@pytest.mark.parametrize("path", ACCEL, ids=lambda p: p.name)
def test_accelerate_config_parses(path):
    from accelerate.commands.config.config_args import ClusterConfig

    raw = yaml.safe_load(path.read_text())
    cfg = ClusterConfig.from_yaml_file(str(path))
    assert cfg.num_processes == raw["num_processes"] and cfg.mixed_precision == "bf16"
    if "deepspeed" in path.stem:
        assert cfg.deepspeed_config["zero_stage"] == 3
        assert "set_z3_leaf_modules" in path.read_text()  # the MoE note


@pytest.mark.parametrize("path", [p for p in SFT if p.stem != "tiny"], ids=lambda p: p.name)
def test_real_recipe_runs_first_steps_on_tiny_stand_in(path, tmp_path, tokenizer):
    from dsnb.model.load import save_tiny_random

    cfg = FinetuneConfig.from_yaml(path)
    model_dir = save_tiny_random(cfg.model_type, tmp_path / "model", tokenizer=tokenizer)
    small = cfg.replace(model=str(model_dir), output_dir=str(tmp_path / "out"), max_steps=2, eval_steps=None,
                        save_steps=None, precision="fp32" if cfg.precision != "auto" else "auto",
                        global_batch_size=None, per_device_batch_size=2, gradient_accumulation_steps=1,
                        train_examples=16, eval_examples=4, max_seq_len=96, warmup_steps=1)
    result = run_sft(small, progress=False)
    assert result.info["steps"] == 2 and result.info["trainable"] > 0
    assert result.info["method"] == cfg.method

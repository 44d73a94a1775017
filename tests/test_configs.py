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


_DISTRIBUTED_CHECK = '''
import json, sys
import transformers, yaml
from accelerate.utils import DeepSpeedPlugin
from deepspeed.utils import z3_leaf_module
from transformers import DeepseekV3ForCausalLM
from transformers.integrations import is_deepspeed_zero3_enabled
from dsnb.model.pretrain import tiny_deepseek_config
from dsnb.train.config import FinetuneConfig
from dsnb.train.prepare import prepare_model

fsdp_yaml, ds_yaml, tiny, out = sys.argv[1:5]
base = FinetuneConfig.from_yaml(tiny).replace(output_dir=out, precision="fp32")
fsdp = yaml.safe_load(open(fsdp_yaml))["fsdp_config"]
wrap = fsdp["fsdp_transformer_layer_cls_to_wrap"]
fargs = base.replace(extra_training_arguments={"fsdp": True, "fsdp_config": dict(fsdp)}).training_arguments()
plugin = DeepSpeedPlugin(**yaml.safe_load(open(ds_yaml))["deepspeed_config"])
dargs = base.replace(extra_training_arguments={"deepspeed": plugin.deepspeed_config}).training_arguments()
model = DeepseekV3ForCausalLM(tiny_deepseek_config(vocab_size=256, num_hidden_layers=2))
model, _ = prepare_model(model, base)
print(json.dumps({
    "fsdp": bool(fargs.fsdp), "fsdp_config": fargs.fsdp_config, "wrap_class_exists": wrap in transformers.LlamaForCausalLM._no_split_modules,
    "zero3": is_deepspeed_zero3_enabled(), "stage": dargs.hf_deepspeed_config.config["zero_optimization"]["stage"],
    "leaves": sorted({type(m).__name__ for m in model.modules() if z3_leaf_module(m)}),
}))
'''


def test_fsdp_and_zero3_configs_load_into_training_arguments(tmp_path):
    """What a CPU can check of the FSDP and ZeRO-3 recipes (accelerate turns FSDP on only on GPUs, and DeepSpeed
    ZeRO-3 does not train on 2 CPU processes here): both configs load into ``TrainingArguments`` through
    transformers' own integrations, and under ZeRO-3 ``prepare_model`` marks the MoE block as a leaf module."""
    import json
    import subprocess
    import sys

    pytest.importorskip("deepspeed")
    script = tmp_path / "check.py"
    script.write_text(_DISTRIBUTED_CHECK)  # its own process: ZeRO-3 switches on process-wide state
    proc = subprocess.run([sys.executable, str(script), str(ROOT / "configs/accelerate/fsdp.yaml"),
                           str(ROOT / "configs/accelerate/deepspeed_zero3.yaml"), str(ROOT / "configs/sft/tiny.yaml"),
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["fsdp"] and r["fsdp_config"]["version"] == 2 and r["wrap_class_exists"]
    assert r["fsdp_config"]["auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP" and r["fsdp_config"]["reshard_after_forward"]
    assert r["zero3"] and r["stage"] == 3
    assert r["leaves"] == ["DeepseekV3MoE"]

"""Every shipped config parses; the real-model recipes run their first steps on a tiny local stand-in; recipes are
written in sections, and a stage refuses a setting it would not read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from dsnb.train.config import (
    FIELD_SECTIONS,
    SECTIONS,
    STAGES,
    ConfigError,
    FinetuneConfig,
    owned_training_arguments,
)
from dsnb.train.sft import run_sft

ROOT = Path(__file__).resolve().parent.parent
SFT = sorted((ROOT / "configs" / "sft").glob("*.yaml"))
RECIPES = SFT + sorted((ROOT / "configs" / "dpo").glob("*.yaml"))
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
from dsnb.train.trainable import prepare_model

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


# --- sections and stages ----------------------------------------------------------------------------


def _flat(sectioned: dict) -> dict:
    """A sectioned recipe written flat, as the recipes were before sections."""
    return {k: v for key, value in sectioned.items()
            for k, v in (value.items() if key in SECTIONS and isinstance(value, dict) else [(key, value)])}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_recipe_is_sectioned_and_loads_as_its_flat_form(path, tmp_path):
    raw = yaml.safe_load(path.read_text())
    assert set(raw) <= {"stage", *SECTIONS} and raw["stage"] == path.parent.name, "recipes are written in sections"
    cfg = FinetuneConfig.from_yaml(path)
    flat = tmp_path / "flat.yaml"
    flat.write_text(yaml.safe_dump(_flat(raw)))
    assert FinetuneConfig.from_yaml(flat) == cfg
    assert FinetuneConfig.from_dict(cfg.to_dict()) == cfg  # what results.json holds reads back


def test_to_dict_writes_the_sections_the_stage_reads_and_round_trips():
    sft = FinetuneConfig(curriculum="linear", adversarial="fgm", augment="swap", packing=True, tasks=("summary",),
                         label_smoothing=0.1, bias_update_rate=0.01, extra_training_arguments={"optim": "sgd"})
    d = sft.to_dict()
    assert list(d) == ["stage", *(s for s in SECTIONS if s not in ("preference", "rl"))]
    assert d["curriculum"] == {"curriculum": "linear", "curriculum_steps": None} and d["data"]["tasks"] == ["summary"]
    assert FinetuneConfig.from_dict(d) == sft and FinetuneConfig.from_dict(json.loads(json.dumps(d))) == sft
    dpo = FinetuneConfig(stage="dpo", method="lora", beta=0.3, max_seq_len=64)
    d = dpo.to_dict()
    assert list(d) == ["stage", "model", "data", "optimisation", "preference", "checkpoints"]
    assert "tasks" not in d["data"] and "label_smoothing" not in d["optimisation"] and d["preference"]["beta"] == 0.3
    assert FinetuneConfig.from_dict(d) == dpo


def test_sectioned_flat_and_dotted_keys_give_the_same_config():
    flat = FinetuneConfig.from_dict({"stage": "dpo", "model": "m", "method": "lora", "beta": 0.2, "learning_rate": 1e-3})
    sectioned = FinetuneConfig.from_dict({"stage": "dpo", "model": {"model": "m", "method": "lora"},
                                          "preference": {"beta": 0.2}, "optimisation": {"learning_rate": 1e-3}})
    dotted = FinetuneConfig.from_dict({"stage": "dpo", "model.model": "m", "model.method": "lora",
                                       "preference.beta": 0.2, "optimisation.learning_rate": 1e-3})
    assert flat == sectioned == dotted
    assert flat.replace(optimisation={"max_steps": 7}).max_steps == flat.replace(**{"optimisation.max_steps": 7}).max_steps == 7


def test_set_section_field_and_field_both_work():
    from dsnb.train.cli import load_config, parse_overrides

    tiny = ROOT / "configs" / "sft" / "tiny.yaml"
    cfg = load_config(tiny, parse_overrides(["optimisation.learning_rate=1e-3", "max_steps=7", "model.method=lora",
                                             "curriculum=linear"]))
    assert (cfg.learning_rate, cfg.max_steps, cfg.method, cfg.curriculum) == (1e-3, 7, "lora", "linear")
    with pytest.raises(ConfigError, match="given twice"):
        load_config(tiny, parse_overrides(["learning_rate=1e-3", "optimisation.learning_rate=2e-3"]))


@pytest.mark.parametrize("values, match", [
    ({"stage": "dpo", "curriculum": "linear"},
     r"curriculum='linear': stage dpo does not read section curriculum .*remove it from the recipe, or train with "
     r"stage: sft"),
    ({"stage": "dpo", "adversarial": {"adversarial": "fgsm"}}, r"adversarial='fgsm': stage dpo does not read section"),
    ({"stage": "dpo", "augment_rate": 0.3}, r"augment_rate=0.3: stage dpo does not read section augment"),
    ({"stage": "dpo", "data": {"tasks": ["dialogue"]}},
     r"tasks=\('dialogue',\) \(section data\): stage dpo ignores it \(DPO trains on .*summary preference pairs"),
    ({"stage": "dpo", "packing": True}, r"packing=True \(section data\): stage dpo ignores it"),
    ({"stage": "dpo", "label_smoothing": 0.1}, r"label_smoothing=0.1 \(section optimisation\): stage dpo ignores it"),
    ({"stage": "dpo", "bias_update_rate": 0.01}, r"bias_update_rate=0.01 \(section model\): stage dpo ignores it"),
    ({"stage": "dpo", "early_stopping_patience": 2}, r"early_stopping_patience=2 .*stage dpo ignores it"),
    ({"preference": {"beta": 0.2}},
     r"beta=0.2: stage sft does not read section preference .*or train with stage: dpo"),
    ({"dpo_loss_type": "ipo"}, r"dpo_loss_type='ipo': stage sft does not read section preference"),
], ids=["dpo-curriculum", "dpo-adversarial", "dpo-augment", "dpo-tasks", "dpo-packing", "dpo-label-smoothing",
        "dpo-router-bias", "dpo-early-stopping", "sft-beta", "sft-loss-type"])
def test_a_stage_refuses_a_setting_it_would_not_read(values, match):
    with pytest.raises(ConfigError, match=match):
        FinetuneConfig.from_dict(values)


def test_defaults_written_out_in_an_unread_section_are_accepted():
    cfg = FinetuneConfig.from_dict({"stage": "dpo", "curriculum": {"curriculum": None}, "augment": None,
                                    "data": {"tasks": ["summary", "next_line"]}, "preference": {"beta": 0.2}})
    assert cfg.beta == 0.2 and cfg.curriculum is None
    assert FinetuneConfig(beta=0.1, dpo_loss_type="sigmoid").stage == "sft"  # the defaults, typed out


@pytest.mark.parametrize("values, match", [
    ({"lerning_rate": 1e-3}, r"unknown config keys \['lerning_rate'\] \(did you mean learning_rate in section "
                             r"optimisation\?\); valid keys are stage, the sections model, data, optimisation.*"
                             r"optimisation: max_steps"),
    ({"optimisaton": {"learning_rate": 1e-3}}, r"unknown config keys \['optimisaton'\] \(did you mean optimisation\?\)"),
    ({"optimisaton.learning_rate": 1e-3}, r"did you mean optimisation.learning_rate\?"),
    ({"optimisation": {"lerning_rate": 1e-3}},
     r"unknown keys \['lerning_rate'\] in section optimisation \(did you mean learning_rate\?\); section "
     r"optimisation holds max_steps, .*learning_rate"),
    ({"data": {"learning_rate": 1e-3}}, r"data.learning_rate: learning_rate belongs in section optimisation, not in "
                                        r"section data"),
    ({"model": {"stage": "dpo"}}, r"stage belongs at the top level"),
    ({"optimisation": 3}, r"section optimisation must be a mapping of its fields"),
])
def test_unknown_or_misplaced_keys_name_the_valid_ones(values, match):
    with pytest.raises(ConfigError, match=match):
        FinetuneConfig.from_dict(values)


def test_sections_and_stages_are_consistent():
    """Every field has a section (or is ``stage``), every stage reads known sections and skips fields of those,
    and every field is read by some stage (so nothing can be set that no stage reads)."""
    assert set(FIELD_SECTIONS.values()) == {None, *SECTIONS} and FIELD_SECTIONS["stage"] is None
    for stage in STAGES.values():
        assert set(stage.sections) <= set(SECTIONS)
        assert all(FIELD_SECTIONS[name] in stage.sections for name in stage.skips)
    assert all(any(stage.reads(name) for stage in STAGES.values()) for name in FIELD_SECTIONS)


def test_owned_training_arguments_come_from_the_table_training_arguments_uses():
    from dataclasses import fields

    from transformers import TrainingArguments

    owned = owned_training_arguments()
    table = FinetuneConfig().owned_arguments(processes=1)
    assert set(owned) <= {f.name for f in fields(TrainingArguments)}
    assert set(table) - set(owned) == {"ddp_find_unused_parameters", "activation_checkpointing_kwargs"}
    assert owned["per_device_eval_batch_size"] == "per_device_batch_size" and owned["data_seed"] == "seed"
    args = FinetuneConfig(extra_training_arguments={"ddp_find_unused_parameters": True}).training_arguments(processes=1)
    assert args.ddp_find_unused_parameters is True  # a course default, not a config field: extra may change it

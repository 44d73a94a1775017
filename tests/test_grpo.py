"""GRPO on the one run path (dsnb.train.grpo): the recipes validate without loading anything, the stage refuses
settings it would not read, `python -m dsnb.train configs/grpo/tiny.yaml` runs and resumes, a full fine-tuning
interrupted and resumed ends with the uninterrupted run's weights, and the real recipe runs its first steps on a
tiny stand-in of its architecture."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from dsnb.train.config import SECTIONS, STAGES, ConfigError, FinetuneConfig
from dsnb.train.rewards import REWARDS

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted((ROOT / "configs" / "grpo").glob("*.yaml"))
TINY = ROOT / "configs" / "grpo" / "tiny.yaml"


def test_there_is_a_tiny_and_a_real_recipe():
    assert TINY in RECIPES and any(FinetuneConfig.from_yaml(p).use_vllm for p in RECIPES)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_validates_without_loading_anything(path, monkeypatch):
    """What tests/test_configs.py asks of every recipe (sectioned, the stage its folder names, the flat form loads the
    same config, to_dict round-trips, the architecture named), and TRL's GRPOConfig builds from it."""
    import dsnb.model.load as load

    monkeypatch.setattr(load, "load_model", lambda *a, **k: pytest.fail("a recipe check loaded a model"))
    raw = yaml.safe_load(path.read_text())
    assert set(raw) <= {"stage", *SECTIONS} and raw["stage"] == path.parent.name == "grpo"
    cfg = FinetuneConfig.from_yaml(path)
    flat = {k: v for key, value in raw.items() for k, v in (value.items() if key in SECTIONS else [(key, value)])}
    assert FinetuneConfig.from_dict(flat) == cfg and FinetuneConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.model_type is not None and set(cfg.rewards) <= set(REWARDS)
    from dsnb.train.grpo import grpo_arguments

    args = grpo_arguments(cfg, processes=1)
    assert (args.num_generations, args.beta, args.use_vllm) == (cfg.num_generations, cfg.kl_coef, cfg.use_vllm)
    assert args.generation_batch_size % cfg.num_generations == 0


def test_the_real_recipe_fits_its_gpu_by_the_estimator():
    from dsnb.plan.rl import estimate_grpo_memory

    cfg = FinetuneConfig.from_yaml(ROOT / "configs" / "grpo" / "deepseek-coder-6.7b-base-lora.yaml")
    prompts = cfg.global_batch_size // cfg.num_generations
    est = estimate_grpo_memory("deepseek-coder-6.7b-base", method=cfg.method, prompts_per_generation=prompts,
                               num_generations=cfg.num_generations, completion_len=cfg.max_completion_length,
                               prompt_len=cfg.max_seq_len - cfg.max_completion_length,
                               micro_batch_size=cfg.per_device_batch_size, lora_rank=cfg.lora_r,
                               vllm_gpu_memory_utilization=cfg.vllm_gpu_memory_utilization, gpu="H100 80GB")
    assert est.fits and est.all_at_once and 50 < est.total < 79  # the figures the recipe's header quotes
    assert round(est.policy_training) == 17 and round(est.vllm_reserved) == 40


@pytest.mark.parametrize("values, match", [
    ({"stage": "grpo", "curriculum": "linear"}, r"curriculum='linear': stage grpo does not read section curriculum"),
    ({"stage": "grpo", "beta": 0.2}, r"beta=0.2: stage grpo does not read section preference .* stage: dpo"),
    ({"stage": "grpo", "data": {"tasks": ["summary"]}}, r"tasks=\('summary',\) \(section data\): stage grpo ignores it"),
    ({"stage": "grpo", "packing": True}, r"packing=True \(section data\): stage grpo ignores it"),
    ({"stage": "grpo", "label_smoothing": 0.1}, r"label_smoothing=0.1 \(section optimisation\): stage grpo ignores it"),
    ({"stage": "grpo", "early_stopping_patience": 2}, r"early_stopping_patience=2 .*stage grpo ignores it"),
    ({"rl": {"num_generations": 4}}, r"num_generations=4: stage sft does not read section rl .*stage: grpo"),
    ({"stage": "dpo", "kl_coef": 0.1}, r"kl_coef=0.1: stage dpo does not read section rl"),
    ({"stage": "grpo", "rl": {"rewards": ["length"]}}, r"rewards=\['length'\]: choose one or more of"),
    ({"stage": "grpo", "rl": {"rewards": "statements"}}, r"expected a list of names"),
    ({"stage": "grpo", "rl": {"grpo_loss_type": "ppo"}}, r"grpo_loss_type='ppo': use one of"),
    ({"stage": "grpo", "rl": {"num_generations": 1}}, r"num_generations: 1 must be >= 2"),
    ({"stage": "grpo", "rl": {"clip_epsilon": 0.0}}, r"clip_epsilon: 0.0 must be in \(0, 1\)"),
    ({"stage": "grpo", "rl": {"max_completion_length": 200}}, r"leaves no room for a prompt in max_seq_len=128"),
    ({"stage": "grpo", "extra_training_arguments": {"beta": 0.1}}, r"extra_training_arguments.beta: set by the config "
                                                                   r"field kl_coef"),
    ({"stage": "grpo", "extra_training_arguments": {"nonsense": 1}}, r"nonsense: not a GRPOConfig field"),
], ids=["curriculum", "dpo-beta", "tasks", "packing", "label-smoothing", "early-stopping", "sft-rl", "dpo-rl",
        "unknown-reward", "reward-string", "loss-type", "one-generation", "epsilon", "no-room", "owned-extra",
        "unknown-extra"])
def test_grpo_refuses_what_it_would_not_read_or_cannot_run(values, match):
    with pytest.raises(ConfigError, match=match):
        FinetuneConfig.from_dict(values)


def test_grpo_passes_its_own_trl_fields_through_and_checks_whole_groups():
    from dsnb.train.grpo import grpo_arguments

    cfg = FinetuneConfig(stage="grpo", num_generations=4, per_device_batch_size=8,
                         extra_training_arguments={"epsilon_high": 0.28, "mask_truncated_completions": True})
    args = grpo_arguments(cfg, processes=1)
    assert (args.epsilon_high, args.mask_truncated_completions, args.epsilon) == (0.28, True, 0.2)
    with pytest.raises(ConfigError, match="not a multiple of num_generations=4"):
        grpo_arguments(cfg.replace(per_device_batch_size=6), processes=1)
    assert set(STAGES["grpo"].sections) == {"model", "data", "optimisation", "rl", "checkpoints"}


def _tiny_sets(out: Path, **extra) -> list[str]:
    values = {"max_steps": 2, "save_steps": 2, "per_device_batch_size": 4, "num_generations": 2,
              "max_completion_length": 8, "max_seq_len": 48, "train_examples": 16, "output_dir": out,
              "logging_steps": 1, **extra}
    return [x for k, v in values.items() for x in ("--set", f"{k}={v}")]


def test_the_tiny_recipe_runs_from_the_command_line_and_resumes(tmp_path, capsys):
    from dsnb.train.cli import main

    out = tmp_path / "run"
    first = main([str(TINY), *_tiny_sets(out)])
    assert first["steps"] == 2 and first["method"] == "lora" and first["reference"] == "adapters disabled"
    assert "grpo: 16 prompts, 2 per step x 2 completions" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["stage"] == "grpo" and results["config"]["rl"]["rewards"] == ["statements"]
    assert (out / "checkpoint-2" / "manifest.json").is_file() and (out / "final" / "adapter_config.json").is_file()
    assert any("reward" in row for row in results["log_history"])
    resumed = main([str(TINY), *_tiny_sets(out, max_steps=4), "--resume", "auto"])
    assert resumed["resumed_from"].endswith("checkpoint-2") and resumed["steps"] == 4
    assert not (out / ".restored").exists()


def test_grpo_full_resumes_to_the_same_weights(base_dir, base, corpus, tmp_path):
    """Full fine-tuning (a frozen reference copy, two passes per sampled batch) stopped at a checkpoint and
    resumed: the sampling after the resume draws the same completions, so the weights end bitwise equal."""
    from test_run_path import _cfg, _check_resume_is_exact

    from dsnb.train.grpo import run_grpo

    def run(out: Path, **kw):
        cfg = _cfg(out, base_dir, stage="grpo", train_examples=12, eval_examples=None, max_seq_len=48,
                   num_generations=2, max_completion_length=8, num_iterations=2, kl_coef=0.04, learning_rate=1e-3)
        result = run_grpo(cfg, model=copy.deepcopy(base[0]), tokenizer=base[1], corpus=corpus, progress=False, **kw)
        assert result.info["reference"] == "frozen copy" and result.info["effective_batch"] == 4
        return result

    _check_resume_is_exact(run, tmp_path, base[0].state_dict())


def test_real_recipe_runs_first_steps_on_tiny_stand_in(tmp_path, tokenizer, corpus):
    """The 6.7B recipe on a randomly initialised tiny model of its architecture (Llama), generation by
    transformers instead of vLLM (a CPU has no vLLM), two steps: every reward, the batch plan and LoRA work."""
    from dsnb.model.load import save_tiny_random
    from dsnb.train.grpo import run_grpo

    cfg = FinetuneConfig.from_yaml(ROOT / "configs" / "grpo" / "deepseek-coder-6.7b-base-lora.yaml")
    model_dir = save_tiny_random(cfg.model_type, tmp_path / "model", tokenizer=tokenizer)
    small = cfg.replace(model=str(model_dir), output_dir=str(tmp_path / "out"), max_steps=2, eval_steps=None,
                        save_steps=None, precision="fp32", use_vllm=False, global_batch_size=None,
                        per_device_batch_size=4, num_generations=2, max_completion_length=8, max_seq_len=64,
                        train_examples=8, warmup_steps=1, gradient_checkpointing=False)
    result = run_grpo(small, corpus=corpus, progress=False)
    assert result.info["steps"] == 2 and result.info["trainable"] > 0 and result.info["method"] == "lora"
    rows = [r for r in result.log_history if "reward" in r]
    assert rows and {"rewards/function_parses/mean", "rewards/function_runs/mean"} <= set(rows[0])

"""Curriculum learning (notebook 05): stages and DeepSpeed pacing, the sampler inside the Trainer, and each rank
drawing its shard of the current stage under torchrun."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dsnb.train.config import ConfigError, FinetuneConfig
from dsnb.train.curriculum import (
    QUANTILE_STAGES,
    CurriculumSampler,
    CurriculumSchedule,
    mean_length_per_step,
    scaled_thresholds,
    schedule_from_config,
)

ROOT = Path(__file__).resolve().parent.parent


def test_article_thresholds_scale_with_the_context():
    assert scaled_thresholds(2048) == (512, 1024)
    assert scaled_thresholds(128) == (32, 64)


def test_discrete_stages_follow_their_step_budgets():
    s = CurriculumSchedule("discrete", (32, 64), (3, 5))
    assert [s.stage(i) for i in range(10)] == [0, 0, 0, 1, 1, 1, 1, 1, 2, 2]
    assert [s.cap(i) for i in (0, 3, 8)] == [32, 64, math.inf]
    band = CurriculumSchedule("discrete", (32, 64), (3, 5), cumulative=False)
    assert band.bounds(4, 100) == (32, 64) and band.bounds(0, 100) == (-math.inf, 32)
    with pytest.raises(ConfigError, match="stage step"):
        CurriculumSchedule("discrete", (32, 64), (3,))


def test_linear_and_root_pacing_match_deepspeeds_formula():
    # DeepSpeed fixed_linear / fixed_root: floor(frac ** (1/degree) * (max - min) + min), rounded down to the step
    lin = CurriculumSchedule("linear", ramp_steps=10, start=8, end=64)
    root = CurriculumSchedule("root", ramp_steps=10, start=8, end=64, root_degree=2)
    root8 = CurriculumSchedule("root", ramp_steps=10, start=8, end=64, root_degree=2, difficulty_step=8)
    assert lin.cap(4) == math.floor(0.5 * 56 + 8) == 36
    assert root.cap(4) == math.floor(0.5 ** 0.5 * 56 + 8) == 47
    assert root8.cap(4) == 40
    assert lin.cap(9) == math.inf and root.cap(50) == math.inf  # ramp done: every example
    caps = [lin.cap(i, 64) for i in range(9)]
    assert caps == sorted(caps) and all(root.cap(i, 64) >= c for i, c in enumerate(caps))


def test_sampler_draws_each_step_from_its_stage():
    lengths = [10 + (i * 7) % 90 for i in range(200)]
    sched = CurriculumSchedule("discrete", (32, 64), (4, 4))
    sampler = CurriculumSampler(lengths, sched, global_batch=8, num_steps=12, seed=3)
    idx = list(sampler)
    assert len(idx) == len(sampler) == 96
    for step in range(12):
        chunk = idx[step * 8:(step + 1) * 8]
        assert max(lengths[i] for i in chunk) <= sched.cap(step)
        assert len(set(chunk)) == 8  # no repeats while the pool is large enough
    assert idx == list(CurriculumSampler(lengths, sched, 8, 12, seed=3))
    assert idx != list(CurriculumSampler(lengths, sched, 8, 12, seed=4))
    means = mean_length_per_step(lengths, idx, 8)
    assert means[0] < means[5] < means[11]
    # a stage with no example falls back to the easiest ones instead of an empty batch
    tiny = CurriculumSampler(lengths, CurriculumSchedule("discrete", (1,), (2,)), 4, 3)
    assert sorted(lengths[i] for i in tiny.step_indices(0)) == sorted(lengths)[:4]


def test_quantile_bounds_split_the_data_into_equal_stages():
    lengths = [30] * 5 + list(range(31, 126))  # skewed like notebook 05's: few below the article's 32 tokens
    article = CurriculumSampler(lengths, CurriculumSchedule("discrete", scaled_thresholds(128), (2, 2)), 8, 6)
    assert len(article.pool(0)) == 7  # the article's first stage: 7 of 100 examples
    sched = CurriculumSchedule("discrete", QUANTILE_STAGES, (2, 2), quantiles=True)
    resolved = sched.on_data(lengths)
    assert resolved.thresholds == (59.0, 92.0) and not resolved.quantiles and resolved.on_data([1.0]) is resolved
    sampler = CurriculumSampler(lengths, sched, 8, 6)
    assert [len(sampler.pool(s)) for s in (0, 2, 4)] == [34, 67, 100]  # ceil(n/3), ceil(2n/3), all
    ties = CurriculumSchedule("discrete", (0.5,), (1,), quantiles=True).on_data([1, 2, 2, 2, 3, 4])
    assert ties.thresholds == (2.0,)  # a stage holds at least its share: tied lengths come along
    root = CurriculumSchedule("root", QUANTILE_STAGES, ramp_steps=4, start=1 / 3, quantiles=True).on_data(lengths)
    assert root.start == 59.0 and root.cap(0, 125) > 59 and root.cap(3, 125) == math.inf
    with pytest.raises(ConfigError, match="shares"):
        CurriculumSchedule("discrete", (32, 64), (3, 3), quantiles=True)
    with pytest.raises(ValueError, match="difficulties"):
        sched.on_data([])


def test_config_turns_it_on():
    assert schedule_from_config(FinetuneConfig()) is None
    s = schedule_from_config(FinetuneConfig(curriculum="discrete", max_steps=90, max_seq_len=128))
    assert s.thresholds == QUANTILE_STAGES and s.quantiles and s.stage_steps == (30, 30)
    r = schedule_from_config(FinetuneConfig(curriculum="root", max_steps=90, curriculum_steps=40))
    assert r.pacing == "root" and r.ramp_steps == 40 and r.start == QUANTILE_STAGES[0]
    with pytest.raises(ConfigError, match="use one of"):
        schedule_from_config(FinetuneConfig(curriculum="easy-first"))


def test_trainer_batches_follow_the_curriculum(base_dir, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    from dsnb.train.chat import to_dataset
    from dsnb.train.sft import build_trainer

    examples = [{"input_ids": [5] * n, "attention_mask": [1] * n, "labels": [5] * n} for n in range(8, 120, 3)]
    cfg = FinetuneConfig(curriculum="discrete", max_steps=6, per_device_batch_size=2, gradient_accumulation_steps=2,
                         eval_steps=None, output_dir=str(tmp_path), max_seq_len=128)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    trainer = build_trainer(cfg, model, tokenizer, to_dataset(examples), progress=False)
    sched = trainer.curriculum  # the config's thirds, resolved against the training set's lengths
    lengths = sorted(len(e["input_ids"]) for e in examples)
    assert sched.thresholds == (lengths[math.ceil(len(lengths) / 3) - 1], lengths[math.ceil(2 * len(lengths) / 3) - 1])
    batches = list(trainer.get_train_dataloader())
    assert len(batches) == 12  # 6 steps x 2 micro-batches
    for i, b in enumerate(batches):
        longest = int(b["attention_mask"].sum(1).max())
        assert longest <= sched.cap(i // 2)
    assert max(int(b["attention_mask"].sum(1).max()) for b in batches[8:]) > sched.thresholds[1]  # the last: all


def test_each_rank_draws_its_shard_of_the_current_stage(tmp_path):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2",
                           str(ROOT / "tests" / "curriculum_ranks.py"), str(tmp_path)],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    info = ranks[0]
    lengths, steps, per_step = info["lengths"], len(info["steps"]), info["global_batch"]
    assert steps == 9
    sched = CurriculumSchedule("discrete", tuple(info["thresholds"]), tuple(info["stage_steps"]))
    expected = CurriculumSampler(lengths, sched, per_step, steps, seed=info["seed"])
    assert ranks[0]["world_size"] == ranks[1]["world_size"] == 2
    for s in range(steps):
        a, b = ranks[0]["steps"][s], ranks[1]["steps"][s]
        assert len(a) == len(b) == per_step // 2
        assert not set(a) & set(b)  # disjoint shards
        assert sorted(a + b) == sorted(expected.step_indices(s))  # together: the whole global batch of the stage
        assert max(lengths[i] for i in a + b) <= sched.cap(s)

"""The command line runs the same training on one process and on two (torchrun, DDP over gloo on CPU)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dsnb.train.cli import parse_overrides

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "configs" / "sft" / "tiny.yaml"
COMMON = dict(global_batch_size=8, per_device_batch_size=2, max_steps=3, eval_steps="null", save_steps="null",
              train_examples=64, eval_examples=8, max_seq_len=80)


def _sets(out: Path, **extra) -> list[str]:
    args = []
    for k, v in {**COMMON, "output_dir": out, **extra}.items():
        args += ["--set", f"{k}={v}"]
    return args


def test_parse_overrides():
    assert parse_overrides(["max_steps=3", "method=lora", "eval_steps=null", "tasks=[summary]"]) == {
        "max_steps": 3, "method": "lora", "eval_steps": None, "tasks": ["summary"]}
    with pytest.raises(SystemExit):
        parse_overrides(["oops"])
    assert parse_overrides(["learning_rate=1e-5"]) == {"learning_rate": 1e-5}  # a number, not YAML 1.1's string
    assert parse_overrides(["optimisation.learning_rate=1e-3", "model.method=lora"]) == {
        "optimisation.learning_rate": 1e-3, "model.method": "lora"}  # section.field: checked when applied


def test_cli_exits_2_naming_a_setting_the_stage_would_not_read(capsys):
    from dsnb.train.cli import main

    dpo = ROOT / "configs" / "dpo" / "tiny.yaml"
    with pytest.raises(SystemExit) as exit_:
        main([str(dpo), "--set", "curriculum=linear"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "curriculum='linear': stage dpo does not read section curriculum" in err
    with pytest.raises(SystemExit) as exit_:
        main([str(TINY), "--set", "optimisaton.learning_rate=1e-3"])
    assert exit_.value.code == 2 and "did you mean optimisation.learning_rate?" in capsys.readouterr().err


def test_two_processes_match_single_process_effective_batch(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = tmp_path / "one"
    subprocess.run([sys.executable, "-m", "dsnb.train", str(TINY), *_sets(one)], check=True, env=env, cwd=ROOT,
                   capture_output=True, timeout=300)
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    two = tmp_path / "two"
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "dsnb.train", str(TINY),
                           *_sets(two)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = json.loads((one / "results.json").read_text())
    b = json.loads((two / "results.json").read_text())
    assert (a["processes"], a["accumulation"]) == (1, 4)
    assert (b["processes"], b["accumulation"]) == (2, 2)
    assert a["effective_batch"] == b["effective_batch"] == 8
    assert a["steps"] == b["steps"] == 3
    assert "effective batch 8 = 2 per device x 2 accumulation x 2 processes" in proc.stdout


def test_global_batch_not_divisible_by_processes_is_rejected(tmp_path):
    """Under a real 2-process launch (accelerate's PartialState counts the processes) 7 sequences cannot be split."""
    script = tmp_path / "check.py"
    script.write_text("from dsnb.train.config import FinetuneConfig\nFinetuneConfig(global_batch_size=7).training_arguments()\n")
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", str(script)],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0 and "not a multiple of the 2 processes" in proc.stderr


def test_runs_under_accelerate_launch(tmp_path):
    """``accelerate launch`` starts the same CLI; on CPU it starts one process (even when asked for 2), and the
    printed effective batch shows it: the global batch is kept by accumulating more."""
    accelerate = shutil.which("accelerate") or str(Path(sys.executable).with_name("accelerate"))
    out = tmp_path / "acc"
    proc = subprocess.run([accelerate, "launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "dsnb.train", str(TINY),
                           *_sets(out)], env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads((out / "results.json").read_text())
    assert (r["processes"], r["accumulation"], r["effective_batch"], r["steps"]) == (1, 4, 8, 3)
    assert "effective batch 8 = 2 per device x 4 accumulation x 1 process" in proc.stdout


_SLOW_RANK_1 = '''import os
if os.environ.get("RANK") == "1":  # rank 1 writes its RNG state late, as a busy rank would
    import time

    import transformers.trainer as t

    _save = t.Trainer._save_rng_state

    def _late(self, output_dir):
        time.sleep(2)
        return _save(self, output_dir)

    t.Trainer._save_rng_state = _late
'''


def test_two_processes_compressed_checkpoints_resume(tmp_path):
    """torchrun, 2 processes, compressed checkpoints: every rank's files are in the manifest (rank 0 waits for
    rank 1 before hashing), resume restores once, and the resumed run ends with the uninterrupted run's weights."""
    import torch
    from safetensors.torch import load_file

    from dsnb.train.checkpoint import MANIFEST, verify_checkpoint

    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_SLOW_RANK_1)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(hook), str(ROOT)])}
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    out = tmp_path / "run"
    sets = _sets(out, max_steps=4, save_steps=2, save_total_limit="null", compress_checkpoints="true")

    def launch(*extra: str) -> dict:
        proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "dsnb.train",
                               str(TINY), *sets, *extra], env=env, cwd=ROOT, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads((out / "results.json").read_text())

    full = launch()
    for step in (2, 4):
        ck = out / f"checkpoint-{step}"
        manifest = verify_checkpoint(ck)
        assert {"rng_state_0.pth", "rng_state_1.pth"} <= set(manifest["files"])
        assert sorted(p.name for p in ck.iterdir() if not p.name.endswith(".zst")) == [MANIFEST]
    shutil.move(out / "final", tmp_path / "full-final")
    shutil.rmtree(out / "checkpoint-4")
    (out / "results.json").unlink()
    resumed = launch("--resume", "auto")
    assert resumed["resumed_from"].endswith("checkpoint-2") and resumed["steps"] == full["steps"] == 4
    assert not (out / ".restored").exists()
    wa, wb = load_file(tmp_path / "full-final" / "model.safetensors"), load_file(out / "final" / "model.safetensors")
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], rtol=1e-4, atol=1e-5, msg=name)

"""Checkpoints: manifest, compression, corruption detection, and SIGKILL-then-resume == uninterrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dsnb.train.checkpoint import (
    MANIFEST,
    CheckpointError,
    find_resumable,
    prepare_resume,
    verify_checkpoint,
    write_manifest,
)

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "configs" / "sft" / "tiny.yaml"


def _fake_checkpoint(path: Path, step: int) -> Path:
    ck = path / f"checkpoint-{step}"
    ck.mkdir(parents=True)
    (ck / "model.safetensors").write_bytes(os.urandom(4096) + bytes(60_000))
    (ck / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return ck


def test_manifest_roundtrip_and_compression(tmp_path):
    ck = _fake_checkpoint(tmp_path, 5)
    original = (ck / "model.safetensors").read_bytes()
    manifest = write_manifest(ck, compress=True)
    assert manifest["compression"] == "zstd" and manifest["stored_bytes"] < manifest["bytes"]
    assert not (ck / "model.safetensors").exists() and (ck / "model.safetensors.zst").exists()
    restored = prepare_resume(ck)
    assert (restored / "model.safetensors").read_bytes() == original
    assert restored.parent.name == ".restored"  # outside the checkpoint-* namespace


def test_corrupted_and_truncated_are_detected(tmp_path):
    ck = _fake_checkpoint(tmp_path, 5)
    write_manifest(ck)
    verify_checkpoint(ck)
    weights = ck / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[100] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted"):
        verify_checkpoint(ck)
    weights.write_bytes(bytes(data[:1000]))
    with pytest.raises(CheckpointError, match="truncated"):
        find_resumable(tmp_path)  # the newest complete checkpoint is bad: an error, not a silent fallback
    (ck / "trainer_state.json").unlink()
    with pytest.raises(CheckpointError, match="missing|truncated"):
        prepare_resume(ck)


def test_incomplete_checkpoint_is_skipped(tmp_path):
    good = _fake_checkpoint(tmp_path, 5)
    write_manifest(good)
    _fake_checkpoint(tmp_path, 10)  # no manifest: a crash while saving
    assert find_resumable(tmp_path) == good
    with pytest.raises(CheckpointError, match="never completed"):
        verify_checkpoint(tmp_path / "checkpoint-10")
    assert find_resumable(tmp_path / "nothing-here") is None


def _train_cmd(out: Path, *extra: str) -> list[str]:
    sets = dict(output_dir=out, max_steps=30, save_steps=10, eval_steps="null", logging_steps=5,
                per_device_batch_size=4, train_examples=240, eval_examples=8, max_seq_len=80,
                compress_checkpoints="true")
    cmd = [sys.executable, "-m", "dsnb.train", str(TINY)]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    return cmd + list(extra)


def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full = tmp_path / "full"
    subprocess.run(_train_cmd(full), check=True, env=env, cwd=ROOT, capture_output=True, timeout=300)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(killed), env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and not (killed / "checkpoint-10" / MANIFEST).exists():
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "results.json").exists(), "the run finished before it could be killed"

    subprocess.run(_train_cmd(killed, "--resume", "auto"), check=True, env=env, cwd=ROOT, capture_output=True,
                   timeout=300)
    a = json.loads((full / "results.json").read_text())
    b = json.loads((killed / "results.json").read_text())
    assert b["resumed_from"] is not None and b["steps"] == a["steps"] == 30
    assert b["final_logged_loss"] == pytest.approx(a["final_logged_loss"], rel=1e-5)
    wa = load_file(full / "final" / "model.safetensors")
    wb = load_file(killed / "final" / "model.safetensors")
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], rtol=1e-4, atol=1e-5, msg=name)


def test_lora_run_resumes_to_the_same_adapters(tmp_path):
    """A LoRA run resumed from its middle checkpoint ends where the uninterrupted run ends."""
    import shutil

    from dsnb.train.cli import main

    def run(out: Path, *extra: str) -> dict:
        sets = dict(output_dir=out, method="lora", max_steps=6, save_steps=3, save_total_limit="null",
                    eval_steps="null", logging_steps=1, per_device_batch_size=4, train_examples=48,
                    eval_examples=8, max_seq_len=80)
        return main([str(TINY), *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")], *extra])

    a = run(tmp_path / "a")
    run(tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoint-6")  # as if the run had died after step 3
    b = run(tmp_path / "b", "--resume", "auto")
    assert b["resumed_from"].endswith("checkpoint-3") and b["steps"] == 6
    assert b["final_logged_loss"] == pytest.approx(a["final_logged_loss"], rel=1e-5)
    wa = load_file(tmp_path / "a" / "final" / "adapter_model.safetensors")
    wb = load_file(tmp_path / "b" / "final" / "adapter_model.safetensors")
    assert wa.keys() == wb.keys() and any("shared_experts" in n for n in wa)
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], rtol=1e-4, atol=1e-6, msg=name)

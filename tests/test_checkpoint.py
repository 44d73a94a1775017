"""Checkpoints: manifest, compression, corruption detection, hostile manifests, SIGKILL-then-resume == uninterrupted."""

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
    sha256_file,
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


def _edit_manifest(ck: Path, edit) -> None:
    path = ck / MANIFEST
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps(edit(manifest) or manifest))


def _rename_entry(manifest: dict, old: str, new: str, stored_as: str | None = None) -> None:
    entry = manifest["files"].pop(old)
    if stored_as is not None:
        entry["stored_as"] = stored_as
    manifest["files"][new] = entry


@pytest.mark.parametrize("key", ["ABSOLUTE", "../../escaped.json", "sub/../../escaped.json", "..\\escaped.json"])
def test_manifest_keys_cannot_write_outside(tmp_path, key):
    """A compressed checkpoint whose manifest names a file outside it must not make resume write it there."""
    run = tmp_path / "run" / "deep"
    ck = _fake_checkpoint(run, 5)
    write_manifest(ck, compress=True)
    target = tmp_path / "escaped.json"
    key = str(target) if key == "ABSOLUTE" else key
    _edit_manifest(ck, lambda m: _rename_entry(m, "trainer_state.json", key))
    with pytest.raises(CheckpointError, match="absolute|'\\.\\.'"):
        prepare_resume(ck)
    assert not target.exists() and not (run / "escaped.json").exists() and not (run.parent / "escaped.json").exists()
    assert not (run / ".restored" / ck.name).exists()


def test_stored_as_cannot_read_outside(tmp_path):
    """``stored_as: ../../x`` must not make verify_checkpoint read (and "verify") a file outside the checkpoint."""
    outside = tmp_path / "secret.bin"
    outside.write_bytes(b"not yours")
    ck = _fake_checkpoint(tmp_path / "run", 5)
    write_manifest(ck)

    def escape(m):
        m["files"]["trainer_state.json"].update(stored_as="../../secret.bin", stored_sha256=sha256_file(outside),
                                                stored_bytes=outside.stat().st_size)

    _edit_manifest(ck, escape)
    with pytest.raises(CheckpointError, match="absolute|'\\.\\.'"):
        verify_checkpoint(ck)


def test_symlinks_pointing_outside_are_refused(tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    ck = _fake_checkpoint(tmp_path / "run", 5)
    write_manifest(ck)
    weights = ck / "model.safetensors"
    (outside / "model.safetensors").write_bytes(weights.read_bytes())  # same bytes: the hashes would match
    weights.unlink()
    weights.symlink_to(outside / "model.safetensors")
    with pytest.raises(CheckpointError, match="outside"):
        verify_checkpoint(ck)
    # a linked directory: the key itself is clean, the link takes it out
    ck2 = _fake_checkpoint(tmp_path / "run2", 5)
    (outside / "extra.bin").write_bytes(b"x")
    write_manifest(ck2)
    (ck2 / "sub").symlink_to(outside, target_is_directory=True)
    _edit_manifest(ck2, lambda m: m["files"].update({"sub/extra.bin": {
        "sha256": sha256_file(outside / "extra.bin"), "bytes": 1, "stored_as": "sub/extra.bin",
        "stored_sha256": sha256_file(outside / "extra.bin"), "stored_bytes": 1}}))
    with pytest.raises(CheckpointError, match="outside"):
        verify_checkpoint(ck2)
    with pytest.raises(CheckpointError, match="symbolic links"):
        write_manifest(ck2)  # nor is a link ever hashed into a new manifest


@pytest.mark.parametrize("manifest", [
    [], {"format": 1}, {"format": 1, "compression": None, "files": []},
    {"format": 1, "compression": None, "files": {"model.safetensors": "abc"}},
    {"format": 1, "compression": None, "files": {"model.safetensors": {"sha256": "0" * 64}}},
    {"format": 1, "compression": "rar", "files": {}},
    {"format": 1, "compression": None, "files": {"model.safetensors": {
        "sha256": "0" * 64, "bytes": "many", "stored_as": "model.safetensors", "stored_sha256": "0" * 64,
        "stored_bytes": 3}}},
], ids=["list", "no-files", "files-list", "entry-string", "entry-missing-keys", "compression", "bytes-string"])
def test_malformed_manifest_is_a_checkpoint_error(tmp_path, manifest):
    ck = _fake_checkpoint(tmp_path, 5)
    (ck / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="malformed|format"):
        verify_checkpoint(ck)


def test_restore_happens_in_the_runs_output_dir_and_only_after_every_hash(tmp_path):
    import zstandard

    ck = _fake_checkpoint(tmp_path / "other-run", 5)
    write_manifest(ck, compress=True)
    mine = tmp_path / "my-run"
    restored = prepare_resume(ck, output_dir=mine)
    assert restored == mine / ".restored" / "checkpoint-5" and (restored / "model.safetensors").is_file()
    # a stored file that matches its stored hash but decompresses to other bytes: nothing is kept
    zst = ck / "trainer_state.json.zst"
    zst.write_bytes(zstandard.ZstdCompressor().compress(b'{"global_step": 6}'))
    _edit_manifest(ck, lambda m: m["files"]["trainer_state.json"].update(
        stored_sha256=sha256_file(zst), stored_bytes=zst.stat().st_size))
    fresh = tmp_path / "fresh-run"
    with pytest.raises(CheckpointError, match="do not match"):
        prepare_resume(ck, output_dir=fresh)
    assert [p.name for p in (fresh / ".restored").iterdir()] == []  # no temporary directory left either
    # a manifest that under-states the size is not allowed to make us write more
    _edit_manifest(ck, lambda m: m["files"]["model.safetensors"].update(bytes=10))
    with pytest.raises(CheckpointError, match="more than the 10 bytes"):
        prepare_resume(ck, output_dir=fresh)


def test_files_not_in_the_manifest_are_reported_and_not_restored(tmp_path, caplog):
    ck = _fake_checkpoint(tmp_path, 5)
    write_manifest(ck, compress=True)
    (ck / "planted.pth").write_bytes(b"\x80\x04N.")
    restored = prepare_resume(ck)
    assert "planted.pth" in caplog.text and "does not list" in caplog.text
    assert not (restored / "planted.pth").exists()


def test_stale_temporaries_are_cleaned_before_compression(tmp_path):
    """An interrupted compression leaves ``.name.XXXX.tmp``: the next save must not hash or list it."""
    ck = _fake_checkpoint(tmp_path, 5)
    (ck / ".model.safetensors.zst.k2j3h4.tmp").write_bytes(b"half a zstd frame")
    manifest = write_manifest(ck, compress=True)
    assert sorted(manifest["files"]) == ["model.safetensors", "trainer_state.json"]
    assert not list(ck.glob("*.tmp")) and not list(ck.glob(".*.tmp"))


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
    assert not (killed / ".restored").exists()  # the decompressed copy is removed once the Trainer has read it
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


def test_early_stopping_ends_with_the_best_checkpoints_weights(tmp_path):
    """Full fine-tuning of the fused-expert tiny model with compressed checkpoints: after early stopping the
    model holds exactly the best checkpoint's weights (routed experts included), not the last step's."""
    from transformers import AutoModelForCausalLM

    from dsnb.train.config import FinetuneConfig
    from dsnb.train.sft import run_sft

    cfg = FinetuneConfig.from_yaml(TINY).replace(
        output_dir=str(tmp_path / "run"), max_steps=20, eval_steps=2, save_steps=2, early_stopping_patience=1,
        learning_rate=0.5, min_learning_rate=0.4, warmup_steps=0, per_device_batch_size=4, train_examples=32,
        eval_examples=8, max_seq_len=80, logging_steps=1, compress_checkpoints=True, save_total_limit=None)
    result = run_sft(cfg, progress=False)
    best = Path(result.info["best_checkpoint"])
    assert int(best.name.split("-")[1]) < result.info["steps"] < 20  # stopped early, best is not the last step
    assert (best / "model.safetensors.zst").is_file() and not (Path(cfg.output_dir) / ".restored").exists()
    want = AutoModelForCausalLM.from_pretrained(prepare_resume(best, tmp_path / "check")).state_dict()
    got = result.model.state_dict()
    assert any("experts.gate_up_proj" in n for n in got)
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, rtol=0, atol=0, msg=name)


def test_sha256_file_equals_hashing_the_bytes(tmp_path):
    import hashlib
    import os

    data = os.urandom(3 * 2**20 + 17)  # several read chunks and a ragged end
    (tmp_path / "blob").write_bytes(data)
    assert sha256_file(tmp_path / "blob") == hashlib.sha256(data).hexdigest()


def test_a_missing_checkpoint_is_not_called_incomplete(tmp_path):
    """A path that does not exist (a typo in --resume, or Python's resume_from) says so, not "never completed"."""
    for path in (tmp_path / "nonexistent", _fake_checkpoint(tmp_path, 5) / "model.safetensors"):
        with pytest.raises(CheckpointError, match="is not a checkpoint directory") as info:
            verify_checkpoint(path)
        assert "never completed" not in str(info.value)

"""Builds of the base model: the seed knob, weight fingerprints and stored results labelled with them."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from dsnb.model import build
from dsnb.model.pretrain import SEED_ENV, PretrainConfig, build_seed

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"


def _save(directory: Path, tensors: dict[str, torch.Tensor]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / "model.safetensors"))
    return directory


def test_fingerprint_is_the_weights_not_the_file(tmp_path):
    a = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(3, dtype=torch.bfloat16)}
    fp = build.weights_fingerprint(_save(tmp_path / "a", a))
    assert len(fp) == build.FINGERPRINT_CHARS
    assert build.weights_fingerprint(_save(tmp_path / "b", dict(reversed(a.items())))) == fp  # order of saving
    nudged = {**a, "w": a["w"].clone()}
    nudged["w"][1, 2] = torch.nextafter(nudged["w"][1, 2], torch.tensor(100.0))  # one float, one ulp
    assert build.weights_fingerprint(_save(tmp_path / "c", nudged)) != fp
    assert build.weights_fingerprint(_save(tmp_path / "d", {**a, "b": a["b"].float()})) != fp  # dtype counts
    with pytest.raises(FileNotFoundError, match="safetensors"):
        build.weights_fingerprint(tmp_path)


def test_build_seed_reads_the_environment(monkeypatch):
    monkeypatch.delenv(SEED_ENV, raising=False)
    assert build_seed() == 0 and PretrainConfig().seed == 0
    monkeypatch.setenv(SEED_ENV, "7")
    assert PretrainConfig().seed == 7
    monkeypatch.setenv(SEED_ENV, "seven")
    with pytest.raises(ValueError, match=f"{SEED_ENV}='seven' is not an integer"):
        PretrainConfig()


def _stored(tmp_path: Path, stamp: dict | None) -> Path:
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps({"rows": [1, 2]} | ({build.STAMP_KEY: stamp} if stamp else {})))
    return path


@pytest.mark.parametrize("stamp,live,same,words", [
    ({"fingerprint": "abc", "heldout_loss": 4.151}, "abc", True, "this machine's build of the base model (fingerprint abc)"),
    ({"fingerprint": "abc", "heldout_loss": 4.151}, "def", False, "the reference build (fingerprint abc, held-out loss 4.151); this machine's build is def"),
    (None, "def", False, "a build whose fingerprint was not recorded"),
    ({"fingerprint": "abc", "heldout_loss": 4.151}, None, False, "this machine has not built the course base model"),
])
def test_stored_result_says_whose_figures_it_holds(tmp_path, stamp, live, same, words):
    stored = build.load_stored(_stored(tmp_path, stamp), live=live)
    assert stored.data["rows"] == [1, 2]
    assert stored.same_build is same
    assert words in stored.label
    assert ("not yours" in stored.label) is not same


def test_missing_stored_result_names_its_benchmark(tmp_path):
    with pytest.raises(FileNotFoundError, match="benchmarks/gptq_anchor.py"):
        build.load_stored(tmp_path / "gptq_anchor.json")


@pytest.mark.parametrize("path", sorted(RESULTS.glob("*.json")), ids=lambda p: p.name)
def test_every_stored_result_carries_its_build(path):
    """Each file in benchmarks/results says which base model it was measured on (fingerprint, seed, loss)."""
    stamp = json.loads(path.read_text()).get(build.STAMP_KEY)
    assert stamp, f"{path.name} has no {build.STAMP_KEY!r} stamp: re-run its benchmark"
    assert len(stamp["fingerprint"]) == build.FINGERPRINT_CHARS
    assert {"seed", "corpus_fingerprint", "heldout_loss"} <= set(stamp)


def test_live_fingerprint_is_the_cached_base_model(base_dir):
    stamp = build.build_stamp(base_dir)
    assert stamp["fingerprint"] == build.weights_fingerprint(base_dir)
    assert stamp["seed"] == build_seed()
    assert build.load_stored(RESULTS / "gptq_anchor.json").live == stamp["fingerprint"]


def test_saved_weights_follow_the_umask(tmp_path):
    """safetensors writes 0600 whatever the umask; every save dsnb makes gives the usual mode instead."""
    from dsnb.cache import follow_umask
    from dsnb.model.load import save_tiny_random
    from dsnb.train.checkpoint import write_manifest

    old = os.umask(0o022)
    try:
        raw = _save(tmp_path / "raw", {"w": torch.zeros(2)}) / "model.safetensors"
        assert stat.S_IMODE(raw.stat().st_mode) == 0o600  # what the library does on its own
        follow_umask(raw.parent)
        assert stat.S_IMODE(raw.stat().st_mode) == 0o644
        checkpoint = _save(tmp_path / "checkpoint-1", {"w": torch.zeros(2)})
        write_manifest(checkpoint)
        assert stat.S_IMODE((checkpoint / "model.safetensors").stat().st_mode) == 0o644
        tiny = save_tiny_random("llama", tmp_path / "tiny")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tiny / "model.safetensors").stat().st_mode) == 0o644

"""The data pipeline, its quality report and the cached cleaned splits (dsnb.data.pipeline)."""

from __future__ import annotations

import shutil

import pytest

from dsnb.data import pipeline
from dsnb.data.corpus import build_corpus, stdlib_root


@pytest.fixture(scope="module")
def small_corpus():
    return build_corpus(stdlib_root() / "email")


@pytest.fixture(scope="module")
def config():
    return pipeline.PipelineConfig(n_dialogues=300, ocr_samples=4)


@pytest.fixture(scope="module")
def result(small_corpus, config):
    return pipeline.run_pipeline(small_corpus, config, extra_code={"broken.py": "def f(:\n"})


def test_every_dimension_accounts_for_every_row(result):
    for d in result.dimensions.values():
        if d.name == "image-text" and d.rows_kept == 0 and "skipped" in next(iter(d.removed), ""):
            continue
        assert d.rows_in - d.rows_kept == sum(d.removed.values()), d.name


def test_targets_are_judged(result):
    text = {m.metric: m for m in result.dimensions["domain text"].metrics}
    assert text["duplicate rate after"].target == "< 0.05" and text["duplicate rate after"].passed
    dial = {m.metric: m for m in result.dimensions["dialogue"].metrics}
    assert dial["distinct-2 (per batch of 16)"].passed
    code = result.dimensions["code"]
    assert code.removed["does not parse"] == 1
    assert all(c.complexity > 3 for c in result.code["subset"])
    tables = pipeline.quality_tables(result)
    assert set(tables) == {"domain text", "dialogue", "code", "image-text"}
    assert list(tables["code"].columns) == ["rows in", "rows kept", "metric", "value", "target", "verdict"]
    assert {r["dimension"] for r in pipeline.stage_rates(result)} >= {"domain text", "dialogue", "code"}


@pytest.mark.skipif(shutil.which("tesseract") is None, reason="tesseract binary not installed (apt-get install tesseract-ocr)")
def test_image_text_subsample(result):
    d = result.dimensions["image-text"]
    assert d.rows_in == 4 and "subsample of 4" in d.note
    assert sum(s < 1 for s in result.image_text["scales"]) == 1


def test_prepare_data_is_cached_and_loads(small_corpus, config, tmp_path, monkeypatch):
    monkeypatch.setenv("DSNB_CACHE", str(tmp_path))
    cfg = pipeline.PipelineConfig(n_dialogues=300, ocr_samples=0)
    path = pipeline.prepare_data(small_corpus, cfg)
    assert path.parent == tmp_path / "data"
    stamp = (path / "report.json").stat().st_mtime_ns
    assert pipeline.prepare_data(small_corpus, cfg) == path
    assert (path / "report.json").stat().st_mtime_ns == stamp
    chat = pipeline.load_prepared("chat", "train", path)
    assert len(chat) > 0 and chat[0]["messages"][0]["role"] == "user"
    assert "complexity" in pipeline.load_prepared("code", "train", path).column_names
    with pytest.raises(ValueError, match="unknown kind"):
        pipeline.load_prepared("audio", "train", path)


def test_training_reads_prepared_dialogues_without_running_the_pipeline(small_corpus, tokenizer, tmp_path,
                                                                         monkeypatch):
    """The dialogue task finds the prepared chat split by corpus fingerprint; no pipeline runs in training."""
    from dsnb.data import prepared
    from dsnb.train.chat import load_split
    from dsnb.train.config import FinetuneConfig

    monkeypatch.setenv("DSNB_CACHE", str(tmp_path))
    cfg = FinetuneConfig(tasks=("dialogue",), max_seq_len=128)
    with pytest.raises(prepared.PreparedDataMissing, match="run notebook 02, or `python -m dsnb.data.pipeline`"):
        load_split(cfg, tokenizer, "train", corpus=small_corpus)
    path = pipeline.prepare_data(small_corpus, pipeline.PipelineConfig(n_dialogues=300, ocr_samples=0))
    assert prepared.find_prepared(small_corpus.fingerprint) == path
    assert prepared.find_prepared("another corpus") is None

    def no_pipeline(*args, **kwargs):
        raise AssertionError("training must not run the data pipeline")

    monkeypatch.setattr(pipeline, "run_pipeline", no_pipeline)
    data = load_split(cfg, tokenizer, "train", corpus=small_corpus)
    chats = pipeline.load_prepared("chat", "train", path)
    assert set(data.tasks) == {"dialogue"} and len(data) + sum(data.removed.values()) == len(chats)

from __future__ import annotations

import pytest

from dsnb.data.corpus import SPLITS, CorpusError, build_corpus, split_of, unigram_entropy


def test_splits_are_disjoint_by_top_level_module(corpus):
    tops = {s: corpus.modules_in(s) for s in SPLITS}
    assert all(tops.values()), "every split has modules"
    assert not tops["train"] & tops["validation"]
    assert not tops["train"] & tops["test"]
    assert not tops["validation"] & tops["test"]
    for item in corpus.code + corpus.docs + corpus.pairs:
        assert item.split == split_of(item.module)


def test_corpus_has_real_content(corpus):
    assert len(corpus.files) > 300
    assert len(corpus.code) > 1000 and len(corpus.docs) > 1000 and len(corpus.pairs) > 1000
    assert any("def " in c.text for c in corpus.code)
    pair = corpus.pairs[0]
    assert pair.signature.startswith(("def ", "async def ")) and pair.signature.endswith(":")
    assert 12 <= len(pair.summary) <= 120
    assert pair.source.lstrip().startswith(("def ", "async def ", "@"))


def test_deterministic_fingerprint(corpus):
    again = build_corpus()
    assert again.fingerprint == corpus.fingerprint
    assert [c.text for c in again.code[:50]] == [c.text for c in corpus.code[:50]]


def test_fingerprint_changes_with_content(tmp_path):
    (tmp_path / "alpha.py").write_text('def f(x):\n    """Return the value of x unchanged."""\n    return x\n')
    first = build_corpus(tmp_path)
    (tmp_path / "alpha.py").write_text('def f(x):\n    """Return the value of x plus one."""\n    return x + 1\n')
    assert build_corpus(tmp_path).fingerprint != first.fingerprint


def test_unparsable_and_large_files_are_reported_not_dropped(tmp_path):
    (tmp_path / "good.py").write_text("x = 1\n")
    (tmp_path / "bad.py").write_text("def broken(:\n")
    (tmp_path / "big.py").write_text("x = 1\n" * 100)
    c = build_corpus(tmp_path, max_file_bytes=100)
    reasons = dict(c.skipped)
    assert "does not parse" in reasons["bad.py"]
    assert "larger than" in reasons["big.py"]
    assert c.files == ["good.py"]


def test_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(CorpusError, match="not a directory"):
        build_corpus(tmp_path / "nope")
    with pytest.raises(CorpusError, match="No .py files"):
        build_corpus(tmp_path)


def test_unknown_split_is_rejected(corpus):
    with pytest.raises(ValueError, match="unknown split"):
        corpus.texts("dev")


def test_unigram_entropy_known_values():
    assert unigram_entropy([1, 1, 1, 1]) == 0
    assert unigram_entropy([0, 1, 2, 3]) == pytest.approx(1.3862943611, rel=1e-9)  # ln 4
    assert unigram_entropy([[0, 1], [0, 1]]) == pytest.approx(0.6931471805, rel=1e-9)  # ln 2


def test_missing_stdlib_source_says_what_to_do(tmp_path, monkeypatch):
    """An interpreter whose standard library is not shipped as .py files gets a clear error."""
    import sysconfig

    from dsnb.data.corpus import stdlib_root

    monkeypatch.setattr(sysconfig, "get_paths", lambda: {"stdlib": str(tmp_path / "lib.zip")})
    with pytest.raises(CorpusError, match=r"(?s)standard library source was not found.*root="):
        stdlib_root()

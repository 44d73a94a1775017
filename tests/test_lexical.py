"""Tokenisation, type/token ratio, lengths and technical entities (dsnb.data.lexical)."""

from __future__ import annotations

import pytest

from dsnb.data import lexical


def test_tokenize_keeps_dotted_names_and_versions():
    assert lexical.tokenize("Use os.path.join() in 3.11.2!") == ["Use", "os.path.join", "(", ")", "in", "3.11.2", "!"]


def test_type_token_ratio_and_mattr():
    toks = "a b a c".split()
    assert lexical.type_token_ratio(toks) == 0.75
    assert lexical.type_token_ratio([]) == 0.0
    # windows of 2 over a b a c: {a,b} {b,a} {a,c} -> all 2/2
    assert lexical.mattr(toks, window=2) == 1.0
    assert lexical.mattr(["x"] * 10, window=5) == pytest.approx(0.2)


def test_length_stats():
    s = lexical.length_stats(["a b", "a b c d"])
    assert s["tokens_mean"] == 3 and s["chars_max"] == 7
    with pytest.raises(ValueError):
        lexical.length_stats([])


def test_entities_of_each_kind():
    text = ("See https://docs.python.org/3/library/os.html. Call os.path.join() in Python 3.11.2; "
            "it raises ValueError. my_var = 0x1F + 3.5, __init__ and getattr(), file Lib/os.py")
    got = [(e.kind, e.text) for e in lexical.find_entities(text)]
    assert got == [
        ("url", "https://docs.python.org/3/library/os.html"),
        ("module_path", "os.path.join()"),
        ("version", "Python 3.11.2"),
        ("exception", "ValueError"),
        ("identifier", "my_var"),
        ("number", "0x1F"),
        ("number", "3.5"),
        ("identifier", "__init__"),
        ("identifier", "getattr()"),
        ("file_path", "Lib/os.py"),
    ]


def test_entities_do_not_overlap_and_counts_list_every_kind():
    ents = lexical.find_entities("version 1.2.3 of https://x.org/a.py")
    spans = sorted((e.start, e.end) for e in ents)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))
    counts = lexical.entity_counts(["1 and 2", "foo_bar"])
    assert set(counts) == set(lexical.ENTITY_KINDS)
    assert counts["number"] == 2 and counts["identifier"] == 1 and counts["url"] == 0

"""Rendering, OCR and the character error rate (dsnb.data.imagetext)."""

from __future__ import annotations

import random
import shutil

import nltk
import pytest

from dsnb.data import imagetext

needs_tesseract = pytest.mark.skipif(
    shutil.which("tesseract") is None,
    reason="the tesseract binary is not installed (apt-get install tesseract-ocr); OCR tests skipped",
)


def test_levenshtein_equals_nltk():
    rng = random.Random(0)
    for alphabet in ("abc ", "aé漢\n"):
        for _ in range(200):
            a = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 12)))
            b = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 12)))
            assert imagetext.levenshtein(a, b) == nltk.edit_distance(a, b)


def test_cer_hand_made():
    assert imagetext.cer("hello world", "hello world") == 0.0
    assert imagetext.cer("hello  world\n", "hello world") == 0.0  # whitespace runs collapsed
    assert imagetext.cer("abcd", "abxd") == 0.25
    assert imagetext.cer("abcd", "") == 1.0
    assert imagetext.cer("ab", "abcdef") == 2.0
    with pytest.raises(ValueError):
        imagetext.cer("  ", "x")


def test_render_is_deterministic_and_degradable():
    a = imagetext.render_snippet("def f(x):\n    return x")
    b = imagetext.render_snippet("def f(x):\n    return x")
    assert a.tobytes() == b.tobytes() and a.mode == "L"
    assert imagetext.render_snippet("def f(x):\n    return x", scale=0.2).tobytes() != a.tobytes()
    with pytest.raises(ValueError):
        imagetext.render_snippet("   ")


@needs_tesseract
def test_clean_render_reads_back_and_degraded_is_rejected():
    text = "Return the width of the virtual root window."
    clean, blurred = imagetext.align_pairs([text, text], scales=[1.0, 0.15])
    assert clean.kept and clean.cer < 0.05
    assert not blurred.kept and blurred.reason.startswith("CER")


def test_missing_tesseract_gives_install_hint(monkeypatch):
    monkeypatch.setattr(imagetext.shutil, "which", lambda name: None)
    assert not imagetext.tesseract_available()
    with pytest.raises(imagetext.TesseractMissing, match="apt-get install tesseract-ocr"):
        imagetext.align_pairs(["x"])

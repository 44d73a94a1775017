"""The one word tokenizer (dsnb.data.words) and token-F1, shared by dedup, dialogue and preference."""

from __future__ import annotations

import pytest

from dsnb.data import dialogue, preference
from dsnb.data.words import token_f1, words


def test_words_lower_cases_and_keeps_punctuation_unless_asked():
    assert words("Use os.path.join(), 3rd try!") == ["use", "os", ".", "path", ".", "join", "(", ")", ",", "3rd",
                                                     "try", "!"]
    assert words("Use os.path.join(), 3rd try!", punctuation=False) == ["use", "os", "path", "join", "3rd", "try"]
    assert words("  ") == [] and words("café_au_lait") == ["café_au_lait"]


def test_token_f1_is_squad_style_and_ignores_punctuation():
    assert token_f1("Return the size.", "return the size") == 1.0
    assert token_f1("return the file", "Return the size") == pytest.approx(2 / 3)
    assert token_f1("the the cat", "the cat cat") == pytest.approx(2 / 3)  # multisets, not sets
    assert token_f1("open a file", "Return the size.") == 0.0
    assert token_f1("", "...") == 1.0 and token_f1("", "x") == 0.0 and token_f1("x", "") == 0.0


def test_the_data_tools_share_it():
    """Dialogue scoring, distinct-n and the preference judge count the same words."""
    assert dialogue.token_f1 is token_f1 and preference.token_f1 is token_f1
    assert dialogue.diversity_words("Hello, World_2!") == words("Hello, World_2!", punctuation=False)

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from dsnb.model.tokenizer import ASSISTANT, BOS, EOS, PAD, USER, save_tokenizer, train_tokenizer

TEXTS = ["def add(a, b):\n    return a + b\n", "Return the sum of two numbers.", "import os\nprint(os.sep)\n"] * 20


@pytest.fixture(scope="module")
def small_tok(tmp_path_factory):
    tok = train_tokenizer(TEXTS, vocab_size=300)
    path = save_tokenizer(tok, tmp_path_factory.mktemp("tok"))
    return AutoTokenizer.from_pretrained(path)


def test_roundtrip_any_text(small_tok):
    text = "naïve ∑ café — 日本 \t\x00 code"  # never seen bytes still encode (byte-level)
    ids = small_tok(text, add_special_tokens=False)["input_ids"]
    assert small_tok.decode(ids) == text


def test_special_tokens_distinct(small_tok):
    assert small_tok.bos_token == BOS and small_tok.eos_token == EOS and small_tok.pad_token == PAD
    ids = {small_tok.convert_tokens_to_ids(t) for t in (BOS, EOS, PAD, USER, ASSISTANT)}
    assert len(ids) == 5
    assert small_tok.pad_token_id != small_tok.eos_token_id


def test_chat_template_and_assistant_mask(small_tok):
    msgs = [{"role": "user", "content": "Summarize: def add(a, b):"}, {"role": "assistant", "content": "Add."}]
    out = small_tok.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    text = small_tok.decode(out["input_ids"])
    assert text == f"{BOS}{USER}Summarize: def add(a, b):{ASSISTANT}Add.{EOS}"
    masked = [t for t, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
    assert small_tok.decode(masked) == f"Add.{EOS}"  # the answer and EOS are trained, nothing else
    prompt = small_tok.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith(ASSISTANT)


def test_unknown_role_raises(small_tok):
    with pytest.raises(Exception, match="unknown chat role"):
        small_tok.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_vocab_size_checked():
    with pytest.raises(ValueError, match="at least"):
        train_tokenizer(TEXTS, vocab_size=100)


def test_deterministic():
    a = train_tokenizer(TEXTS, vocab_size=300)
    b = train_tokenizer(TEXTS, vocab_size=300)
    assert a.get_vocab() == b.get_vocab()


def test_course_tokenizer_compresses_code(tokenizer, corpus):
    text = "\n".join(corpus.texts("test")[:20])
    n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    assert len(text) / n > 2.5  # well above 1 byte per token: BPE learned real merges
    assert len(tokenizer) == 4096

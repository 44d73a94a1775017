"""Held-out evaluation: metrics are computed as defined, and a short SFT beats the base model."""

from __future__ import annotations

import math

import pytest
import torch

from dsnb.train.chat import build_sft_data
from dsnb.train.config import FinetuneConfig
from dsnb.train.evaluation import beats, compare, completion_loss, evaluate_model, exact_match
from dsnb.train.sft import run_sft


@pytest.fixture(scope="module")
def test_data(corpus, tokenizer):
    return build_sft_data(corpus.pairs_in("test"), tokenizer, limit=48, split="test")


def test_completion_loss_matches_the_model_loss(base_dir, tokenizer, test_data):
    from dsnb.model.load import load_model

    model, _ = load_model(base_dir, dtype=torch.float32)
    ex = test_data.examples[0]
    out = model(input_ids=torch.tensor([ex["input_ids"]]), labels=torch.tensor([ex["labels"]]))
    one = build_sft_data([], tokenizer)
    one.examples, one.messages, one.tasks = [ex], [test_data.messages[0]], [test_data.tasks[0]]
    mine = completion_loss(model, tokenizer, one)
    assert mine["loss"] == pytest.approx(out.loss.item(), rel=1e-4)
    assert mine["perplexity"] == pytest.approx(math.exp(mine["loss"]))


def test_exact_match():
    assert exact_match("  return x\n", "return x")
    assert not exact_match("return y", "return x")


def test_fine_tuned_beats_base(base_dir, tokenizer, corpus, test_data, tmp_path):
    from dsnb.model.load import load_model

    model, _ = load_model(base_dir, dtype=torch.float32)
    before = evaluate_model(model, tokenizer, test_data, max_new_tokens=16)
    assert set(before) >= {"summary", "next_line", "all", "samples"}
    cfg = FinetuneConfig(output_dir=str(tmp_path), max_steps=60, eval_steps=None, learning_rate=3e-3,
                         min_learning_rate=1e-4)
    result = run_sft(cfg, model=model, tokenizer=tokenizer, corpus=corpus, progress=False)
    after = evaluate_model(result.model, tokenizer, test_data, max_new_tokens=16)
    assert beats(before, after, "token accuracy")
    assert beats(before, after, "loss")
    rows = compare(before, after)
    assert {r["metric"] for r in rows} >= {"loss", "perplexity", "token accuracy", "exact match"}

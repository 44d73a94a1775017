"""Evaluating a fine-tune on held-out data: loss, perplexity and task metrics, before vs after.

Everything here is computed on the corpus's *test* split, whose top-level modules the model never
trained on. Per task (``summary``: signature -> one-line docstring summary; ``next_line``: code ->
its next line, the analogue of claim C04's code-completion accuracy):

- ``completion_loss``: mean cross-entropy over the answer tokens only (the same tokens SFT trains
  on) and its perplexity;
- token accuracy: how often the most likely next token is the right one, answer tokens only
  (teacher forcing);
- exact match: greedy generation from the prompt, compared with the reference answer (whitespace
  at the ends ignored).

``evaluate_model`` returns one row per task; ``compare`` joins a before and an after run into the
table notebook 03 shows. Taught in notebook 03.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from dsnb.model.device import model_device
from dsnb.model.scoring import greedy_generate, token_stats
from dsnb.train.chat import SFTData, data_collator, prompt_ids


@torch.no_grad()
def answer_token_stats(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, data: SFTData, batch_size: int = 32
) -> list[dict[str, float]]:
    """Per example: summed answer-token cross-entropy, correct argmax predictions and answer tokens."""
    model.eval()
    collate = data_collator(tokenizer)
    device = model_device(model)
    out: list[dict[str, float]] = []
    for i in range(0, len(data.examples), batch_size):
        batch = collate([dict(e) for e in data.examples[i:i + batch_size]])
        batch = {k: v.to(device) for k, v in batch.items()}
        stats = token_stats(model, batch["input_ids"], batch["labels"], batch["attention_mask"])
        for nll, correct, tokens in zip(*(stats[k].tolist() for k in ("nll", "correct", "tokens")), strict=True):
            out.append({"nll": nll, "correct": correct, "tokens": tokens})
    return out


def completion_loss(model: nn.Module, tokenizer: PreTrainedTokenizerBase, data: SFTData) -> dict[str, float]:
    """Mean cross-entropy (nats) over all answer tokens of ``data``, its perplexity and token accuracy."""
    stats = answer_token_stats(model, tokenizer, data)
    tokens = sum(s["tokens"] for s in stats)
    if tokens == 0:
        raise ValueError("the data has no answer tokens to evaluate")
    loss = sum(s["nll"] for s in stats) / tokens
    return {"loss": loss, "perplexity": math.exp(loss), "token accuracy": sum(s["correct"] for s in stats) / tokens}


@torch.no_grad()
def generate_answers(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    conversations: list[list[dict[str, str]]],
    max_new_tokens: int = 32,
    batch_size: int = 32,
) -> list[str]:
    """Greedy answers to each conversation's prompt (its last, assistant, message is left out)."""
    prompts = [prompt_ids(c, tokenizer) for c in conversations]
    new = greedy_generate(model, tokenizer, prompts, max_new_tokens, batch_size)
    return tokenizer.batch_decode(new, skip_special_tokens=True)


def exact_match(prediction: str, reference: str) -> bool:
    """True if the two strings agree once whitespace at both ends is ignored."""
    return prediction.strip() == reference.strip()


def evaluate_model(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    data: SFTData,
    generate: bool = True,
    max_new_tokens: int = 32,
) -> dict[str, dict[str, Any]]:
    """Per task (and ``"all"``): examples, answer-token loss, perplexity, token accuracy, exact match.

    With ``generate=True`` the model also answers every prompt greedily; the answers are returned
    under ``"samples"`` (task, prompt, reference, prediction) for a look at what changed.
    """
    stats = answer_token_stats(model, tokenizer, data)
    preds = generate_answers(model, tokenizer, data.messages, max_new_tokens) if generate else None
    groups: dict[str, list[int]] = defaultdict(list)
    for i, task in enumerate(data.tasks):
        groups[task].append(i)
        groups["all"].append(i)
    result: dict[str, dict[str, Any]] = {}
    for task, idx in groups.items():
        tokens = sum(stats[i]["tokens"] for i in idx)
        loss = sum(stats[i]["nll"] for i in idx) / tokens
        row: dict[str, Any] = {"examples": len(idx), "loss": loss, "perplexity": math.exp(loss),
                               "token accuracy": sum(stats[i]["correct"] for i in idx) / tokens}
        if preds is not None:
            refs = [data.messages[i][-1]["content"] for i in idx]
            row["exact match"] = sum(exact_match(preds[i], r) for i, r in zip(idx, refs, strict=True)) / len(idx)
        result[task] = row
    if preds is not None:
        result["samples"] = [
            {"task": data.tasks[i], "prompt": data.messages[i][0]["content"],
             "reference": data.messages[i][-1]["content"], "prediction": preds[i]}
            for i in range(len(preds))
        ]
    return result


def compare(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of (task, metric, before, after, change) for every metric both evaluations have."""
    rows = []
    for task in (t for t in before if t != "samples" and t in after):
        for metric, b in before[task].items():
            if metric == "examples" or metric not in after[task]:
                continue
            a = after[task][metric]
            rows.append({"task": task, "metric": metric, "before": b, "after": a, "change": a - b})
    return rows


def beats(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]], metric: str = "token accuracy",
          task: str = "all") -> bool:
    """Whether ``after`` is better than ``before`` on ``metric`` (higher is better; lower for loss/perplexity)."""
    b, a = before[task][metric], after[task][metric]
    return a < b if metric in ("loss", "perplexity") else a > b

"""Calibration of next-token predictions: expected calibration error (ECE) and reliability diagrams.

Claim C20 (label smoothing alpha = 0.1). With label smoothing the Trainer's logged training loss is
the *smoothed* cross-entropy, no longer the negative log-likelihood: its floor is above zero and it
cannot be turned into a perplexity. ``answer_token_predictions`` therefore scores held-out answer
tokens with the plain NLL and returns, per token, the model's confidence (probability of its top
token) and whether that token was right. ``reliability_bins`` groups them into equal-width
confidence bins; ``expected_calibration_error`` is the token-weighted mean gap |accuracy -
confidence| over the bins (Guo et al., 2017). ``smoothed_cross_entropy`` is the loss the Trainer
logs (transformers' ``LabelSmoother``), written out so the notebook can show the difference.

Taught in notebook 05.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from dsnb.model.device import model_device
from dsnb.train.chat import data_collator


@dataclass
class TokenPredictions:
    """Per answer token: top-1 confidence, whether it was right, and its NLL (nats)."""

    confidence: np.ndarray
    correct: np.ndarray
    nll: np.ndarray

    @property
    def loss(self) -> float:
        """Mean NLL over the answer tokens (no smoothing)."""
        return float(self.nll.mean())

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean())


@torch.no_grad()
def answer_token_predictions(model: nn.Module, tokenizer: PreTrainedTokenizerBase,
                             examples: Sequence[dict[str, list[int]]], batch_size: int = 32) -> TokenPredictions:
    """Confidence, correctness and plain NLL of every answer token (label != -100) of ``examples``."""
    model.eval()
    collate = data_collator(tokenizer)
    device = model_device(model)
    conf, correct, nll = [], [], []
    for i in range(0, len(examples), batch_size):
        batch = collate([dict(e) for e in examples[i:i + batch_size]])
        logits = model(input_ids=batch["input_ids"].to(device),
                       attention_mask=batch["attention_mask"].to(device)).logits.float()[:, :-1]
        labels = batch["labels"][:, 1:].to(device)
        mask = labels != -100
        logp = torch.log_softmax(logits[mask], dim=-1)
        target = labels[mask]
        top = logp.max(dim=-1)
        conf.append(top.values.exp().cpu())
        correct.append((top.indices == target).cpu())
        nll.append(-logp.gather(1, target[:, None])[:, 0].cpu())
    if not conf:
        raise ValueError("no examples to score")
    out = TokenPredictions(torch.cat(conf).numpy(), torch.cat(correct).numpy(), torch.cat(nll).numpy())
    if out.nll.size == 0:
        raise ValueError("the examples have no answer tokens (every label is -100)")
    return out


#: Equal-width confidence bins of the ECE and of the reliability diagram: one count everywhere, so a diagram and
#: the ECE printed on it describe the same bins (10, as in Guo et al.'s diagrams).
ECE_BINS = 10


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> list[dict[str, float]]:
    """One row per equal-width confidence bin (right-closed, the first also holds 0): count, mean
    confidence and accuracy (NaN for empty bins)."""
    confidence = np.asarray(confidence, dtype=float)
    correct = np.asarray(correct, dtype=float)
    if confidence.shape != correct.shape or confidence.size == 0:
        raise ValueError("confidence and correct must be non-empty and of the same shape")
    if confidence.min() < 0 or confidence.max() > 1:
        raise ValueError("confidences must lie in [0, 1]")
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    rows = []
    for b in range(bins):
        m = which == b
        n = int(m.sum())
        rows.append({"low": float(edges[b]), "high": float(edges[b + 1]), "count": n,
                     "confidence": float(confidence[m].mean()) if n else float("nan"),
                     "accuracy": float(correct[m].mean()) if n else float("nan")})
    return rows


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE: sum over bins of (share of tokens in the bin) x |accuracy - mean confidence|."""
    rows = reliability_bins(confidence, correct, bins)
    total = sum(r["count"] for r in rows)
    return float(sum(r["count"] / total * abs(r["accuracy"] - r["confidence"]) for r in rows if r["count"]))


def smoothed_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, alpha: float) -> torch.Tensor:
    """The label-smoothed loss transformers' ``LabelSmoother`` computes (labels already shifted, -100 ignored):
    ``(1 - alpha) * NLL + alpha * mean over the vocabulary of -log p``."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    mask = labels != -100
    nll = -logp.gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    uniform = -logp.mean(dim=-1)
    n = mask.sum()
    return ((1 - alpha) * (nll * mask).sum() + alpha * (uniform * mask).sum()) / n

"""Scoring and greedy decoding, shared by pretraining (notebook 01's base model) and evaluation (notebook 03).

``token_stats``: per sequence, the summed next-token cross-entropy, the correct argmax predictions and
the number of scored positions, counting only positions whose label is not -100. Pretraining's
held-out loss (every token scored) and fine-tuning's answer-token loss (prompt masked) are both this.
``greedy_generate``: greedy continuations of token-id prompts, left-padded in batches, through
``model.generate``.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from dsnb.model.device import model_device


@torch.no_grad()
def token_stats(
    model: nn.Module, input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Per row: ``nll`` (summed cross-entropy, nats), ``correct`` and ``tokens`` over the positions labelled != -100."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
    logits, labels = logits[:, :-1], labels[:, 1:]
    mask = labels != -100
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0), reduction="none") * mask
    correct = (logits.argmax(-1) == labels) & mask
    return {"nll": nll.sum(1), "correct": correct.sum(1), "tokens": mask.sum(1)}


@torch.no_grad()
def greedy_generate(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[int]],
    max_new_tokens: int = 32,
    batch_size: int = 32,
) -> list[list[int]]:
    """The greedily generated token ids (prompt excluded) for each token-id prompt.

    Prompts are left-padded with the pad token within a batch and masked; generation stops at the
    tokenizer's end-of-sequence token (the ids after it are padding).
    """
    model.eval()
    device = model_device(model)
    pad = tokenizer.pad_token_id
    out: list[list[int]] = []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i:i + batch_size]
        width = max(len(p) for p in chunk)
        ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in chunk], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=device)
        y = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                           pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
        out += y[:, width:].tolist()
    return out

"""The data and the measures of notebook 09's compression table: calibration / held-out blocks, perplexity, bytes.

Calibration text comes from the corpus's training split, held-out text from its test split (other
top-level modules of the standard library), both packed into fixed-length blocks of token ids.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_model
from torch import nn
from transformers import PreTrainedTokenizerBase

from dsnb.data.corpus import Corpus, course_corpus
from dsnb.model.pretrain import heldout_loss, pack_texts


def calibration_blocks(tokenizer: PreTrainedTokenizerBase, n: int = 32, seq_len: int = 128, texts: int = 400,
                       corpus: Corpus | None = None) -> torch.Tensor:
    """The first ``n`` blocks of ``seq_len`` tokens packed from the first ``texts`` training-split texts."""
    corpus = corpus or course_corpus()
    blocks = pack_texts(corpus.texts("train")[:texts], tokenizer, seq_len)
    if blocks.shape[0] < n:
        raise ValueError(f"only {blocks.shape[0]} calibration blocks from {texts} texts; raise texts= or lower n=")
    return blocks[:n]


def heldout_blocks(tokenizer: PreTrainedTokenizerBase, n: int = 128, seq_len: int = 128, seed: int = 0,
                   corpus: Corpus | None = None) -> torch.Tensor:
    """``n`` blocks drawn at random (under ``seed``) from the whole test split packed into ``seq_len`` blocks."""
    corpus = corpus or course_corpus()
    blocks = pack_texts(corpus.texts("test"), tokenizer, seq_len)
    g = torch.Generator().manual_seed(seed)
    return blocks[torch.randperm(blocks.shape[0], generator=g)[: min(n, blocks.shape[0])]]


def perplexity(model: nn.Module, blocks: torch.Tensor, batch_size: int = 16) -> float:
    """``exp`` of the mean next-token cross-entropy over ``blocks`` (``dsnb.model.pretrain.heldout_loss``)."""
    return math.exp(heldout_loss(model, blocks, batch_size))


def safetensors_bytes(model: nn.Module) -> int:
    """Size on disk of ``model``'s state dict (parameters and buffers) written as one safetensors file."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "model.safetensors"
        save_model(model, str(path))
        return os.path.getsize(path)

"""A smaller student distilled from a causal LM on plain text, for the compression table. Notebook 09.

``distil_on_blocks`` trains ``dsnb.train.distill.shrink_model``'s student (fewer decoder layers and
routed experts, initialised from the teacher) with ``DistillationTrainer`` and ``CombinedLoss`` on
fixed-length token blocks, the teacher's own pretraining kind of data, so that its held-out
perplexity sits in the same table as the quantized and pruned models. Notebook 04 teaches the loss
and distils on the fine-tuning task.
"""

from __future__ import annotations

import tempfile

import torch
from transformers import PreTrainedModel, PrinterCallback

from dsnb.model.pretrain import BlockDataset
from dsnb.model.trainer_defaults import course_training_arguments
from dsnb.train.distill import DistillationTrainer, shrink_model
from dsnb.train.losses import CombinedLoss


def distil_on_blocks(teacher: PreTrainedModel, blocks: torch.Tensor, num_hidden_layers: int = 2,
                     n_routed_experts: int = 4, steps: int = 40, batch_size: int = 8, learning_rate: float = 2e-3,
                     kl_weight: float = 0.7, temperature: float = 2.0, seed: int = 0) -> PreTrainedModel:
    """Distil a shrunk copy of ``teacher`` on ``blocks`` ``(n, seq)`` of token ids; returns the student (eval mode)."""
    if blocks.dim() != 2 or blocks.shape[0] == 0:
        raise ValueError(f"blocks must be a non-empty (n, seq) tensor of token ids, got shape {tuple(blocks.shape)}")
    torch.manual_seed(seed)
    student, _ = shrink_model(teacher, num_hidden_layers, n_routed_experts)
    with tempfile.TemporaryDirectory() as out:
        args = course_training_arguments(output_dir=out, max_steps=steps, per_device_train_batch_size=batch_size,
                                         learning_rate=learning_rate, lr_scheduler_type="cosine",
                                         warmup_steps=max(1, steps // 10), save_strategy="no",
                                         logging_steps=max(1, steps // 4), seed=seed)
        trainer = DistillationTrainer(model=student, args=args, train_dataset=BlockDataset(blocks), teacher=teacher,
                                      loss_fn=CombinedLoss(1.0 - kl_weight, kl_weight, temperature))
        trainer.remove_callback(PrinterCallback)  # no log dicts printed mid-run
        trainer.train()
    return student.eval()

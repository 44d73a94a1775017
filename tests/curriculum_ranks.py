"""Run by tests/test_curriculum.py under ``torchrun --nproc_per_node 2``: each rank writes the example indices
its curriculum data loader gives it, step by step."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn


class Probe(nn.Module):
    """The smallest model the Trainer accepts: it only needs a forward that takes the batch."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids=None, attention_mask=None, labels=None):
        return {"loss": self.w.sum()}


def main(out: Path) -> None:
    from transformers import AutoTokenizer

    from dsnb.model.pretrain import base_model_path
    from dsnb.train.chat import to_dataset
    from dsnb.train.config import FinetuneConfig
    from dsnb.train.sft import build_trainer

    tokenizer = AutoTokenizer.from_pretrained(base_model_path())
    lengths = [6 + (i * 13) % 110 for i in range(160)]
    # example i is made of token i + 10 repeated, so the first token of a row names the example
    examples = [{"input_ids": [i + 10] * n, "attention_mask": [1] * n, "labels": [i + 10] * n}
                for i, n in enumerate(lengths)]
    cfg = FinetuneConfig(curriculum="discrete", curriculum_steps=3, max_steps=9, per_device_batch_size=2,
                         global_batch_size=8, eval_steps=None, output_dir=str(out / "run"), seed=7)
    trainer = build_trainer(cfg, Probe(), tokenizer, to_dataset(examples), progress=False)
    args = trainer.args
    accum = args.gradient_accumulation_steps
    steps: list[list[int]] = []
    for i, batch in enumerate(trainer.get_train_dataloader()):
        if i % accum == 0:
            steps.append([])
        steps[-1] += [int(t) - 10 for t in batch["input_ids"][:, 0]]
    sched = trainer.curriculum
    (out / f"rank{args.process_index}.json").write_text(json.dumps({
        "world_size": args.world_size, "global_batch": 8, "steps": steps, "lengths": lengths, "seed": 7,
        "thresholds": list(sched.thresholds), "stage_steps": list(sched.stage_steps)}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))

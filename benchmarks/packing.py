"""What packing costs: held-out answer loss and speed with no packing, padding-free packing and naive packing.

Three SFT runs of the course's tiny model, same recipe and number of optimizer steps:

- ``none``: each micro-batch padded to its longest example (``FinetuneConfig(packing=False)``);
- ``padding-free``: the micro-batch's examples joined into one row, positions restarting at each
  example (``packing=True``, transformers' ``DataCollatorWithFlattening``): the same examples and the
  same loss as ``none``, without the padding tokens;
- ``naive``: ``dsnb.train.chat.pack_examples`` rows of up to ``max_seq_len`` tokens whose examples attend
  to each other (the cheap packing many scripts use). A row holds several examples, so at equal steps
  this run also sees more examples; the table shows how many.

Prints the held-out answer-token loss (``dsnb.train.evaluation.completion_loss``), tokens processed
(padding included) and seconds per step. Run: ``.venv/bin/python benchmarks/packing.py [--steps 60]``.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from dsnb.model.load import base_model
from dsnb.train.chat import load_sft_data, pack_examples, to_dataset
from dsnb.train.config import FinetuneConfig
from dsnb.train.evaluation import completion_loss
from dsnb.train.sft import build_trainer
from dsnb.train.trainable import prepare_model


class _CountTokens:
    """Wraps a collator and counts the token positions (padding included) it hands to the model."""

    def __init__(self, collate):
        self.collate, self.tokens, self.examples = collate, 0, 0

    def __call__(self, features):
        batch = self.collate(features)
        self.tokens += batch["input_ids"].numel()
        self.examples += len(features)
        return batch


def run(mode: str, steps: int, seed: int) -> dict[str, float]:
    cfg = FinetuneConfig(max_steps=steps, eval_steps=None, packing=mode == "padding-free", seed=seed,
                         output_dir=f"/tmp/dsnb-packing-{mode}", eval_examples=256, logging_steps=steps)
    model, tokenizer = base_model()
    torch.manual_seed(cfg.seed)
    model, _ = prepare_model(copy.deepcopy(model), cfg)
    train, evald = load_sft_data(cfg, tokenizer)
    rows = pack_examples(train.examples, cfg.max_seq_len) if mode == "naive" else train.examples
    trainer = build_trainer(cfg, model, tokenizer, to_dataset(rows), None, progress=False)
    counter = _CountTokens(trainer.data_collator)
    trainer.data_collator = counter
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    examples = counter.examples * (len(train.examples) / len(rows))  # naive rows hold several examples
    return {"mode": mode, "held-out loss": completion_loss(model, tokenizer, evald)["loss"],
            "examples seen": examples, "tokens processed": counter.tokens, "s/step": seconds / steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    ns = parser.parse_args()
    rows = [run(mode, ns.steps, seed) for seed in ns.seeds for mode in ("none", "padding-free", "naive")]
    print(f"{'mode':<13} {'seed':>4} {'held-out loss':>13} {'examples seen':>13} {'tokens':>9} {'s/step':>7}")
    for seed_index, r in enumerate(rows):
        print(f"{r['mode']:<13} {ns.seeds[seed_index // 3]:>4} {r['held-out loss']:>13.4f} {r['examples seen']:>13.0f} "
              f"{r['tokens processed']:>9,} {r['s/step']:>7.3f}")
    for seed_index in range(len(ns.seeds)):
        none, free, naive = rows[3 * seed_index: 3 * seed_index + 3]
        print(f"seed {ns.seeds[seed_index]}: padding-free - none = {free['held-out loss'] - none['held-out loss']:+.4f} "
              f"nats (target: within noise), tokens {free['tokens processed'] / none['tokens processed']:.2f}x; "
              f"naive - none = {naive['held-out loss'] - none['held-out loss']:+.4f} nats")


if __name__ == "__main__":
    main()

"""DPO's β: held-out reward margin and accuracy against the drift from the reference (KL), per β.

Notebook 06's run (configs/dpo/tiny.yaml: the course's SFT model, LoRA, the same pairs, steps and
learning rate) repeated for each β; every run is measured on the same held-out test-split pairs:
reward accuracy and margin, mean per-token KL(π ‖ π_ref) on the reference answers, token accuracy of
the reference answers (teacher forced) and the head-to-head win rate against the SFT model under
token-F1. Writes benchmarks/results/dpo_beta_sweep.json, which notebook 06 loads and plots.
Run: python benchmarks/dpo_beta_sweep.py [--betas 0.1 0.05 0.5] [--steps 40]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch

from dsnb.cache import write_json_atomic
from dsnb.data.corpus import course_corpus
from dsnb.data.preference import mix
from dsnb.model.build import STAMP_KEY, build_stamp
from dsnb.train.config import FinetuneConfig
from dsnb.train.dpo import (
    answer_accuracy,
    build_dpo_trainer,
    head_to_head,
    heldout_metrics,
    preference_splits,
    sft_model,
    sft_samples,
)

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "configs" / "dpo" / "tiny.yaml"
OUT = ROOT / "benchmarks" / "results" / "dpo_beta_sweep.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--betas", type=float, nargs="+", default=[0.1, 0.05, 0.5])
    parser.add_argument("--steps", type=int, default=None, help="default: the recipe's max_steps")
    parser.add_argument("--test-functions", type=int, default=128, help="notebook 06's TEST_FUNCTIONS")
    parser.add_argument("--out", default=str(OUT))
    ns = parser.parse_args()
    base = FinetuneConfig.from_yaml(RECIPE)
    if ns.steps:
        base = base.replace(max_steps=ns.steps)
    model, tok = sft_model()
    corpus = course_corpus()
    splits = preference_splits(model, tok, corpus, base.train_examples, ns.test_functions, base.seed)
    refs = [f.summary for f in splits.test_functions]
    sft_answers = [splits.sft_test_answers[f.qualname] for f in splits.test_functions]
    sft_acc = answer_accuracy(model, tok, splits.test_functions)
    rows = []
    for beta in ns.betas:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = base.replace(beta=beta, output_dir=tmp, eval_steps=None, save_steps=None)
            policy, _ = sft_model()
            trainer = build_dpo_trainer(cfg, policy, tok, _dataset(splits.train), progress=False)
            t0 = time.perf_counter()
            trainer.train()
            seconds = time.perf_counter() - t0
        metrics = heldout_metrics(trainer, splits.test, beta)
        answers = sft_samples(trainer.model, tok, splits.test_functions)
        h2h = head_to_head(sft_answers, [answers[f.qualname] for f in splits.test_functions], refs)
        row = {"beta": beta, "steps": cfg.max_steps, "train seconds": seconds, **metrics,
               "token accuracy": answer_accuracy(trainer.model, tok, splits.test_functions),
               "win rate vs SFT": h2h["win rate"], "wins": h2h["wins"], "ties": h2h["ties"],
               "losses": h2h["losses"]}
        rows.append(row)
        _write(ns.out, splits, sft_acc, rows)  # after every beta: a long sweep keeps what it measured
        print(f"beta {beta:g}: reward accuracy {row['reward accuracy']:.3f}, margin {row['reward margin']:.3f}, "
              f"KL {row['KL from reference']:.4f} nats/token, win rate {row['win rate vs SFT']:.3f} "
              f"({seconds:.0f} s)", flush=True)
    print(f"wrote {ns.out}")


def _write(out, splits, sft_acc: float, rows: list[dict]) -> None:
    write_json_atomic(out, {
        "recipe": str(RECIPE.relative_to(ROOT)), "test pairs": len(splits.test), "train pairs": len(splits.train),
        "train mix": mix(splits.train), "test mix": mix(splits.test), "sft token accuracy": sft_acc,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        STAMP_KEY: build_stamp(), "rows": sorted(rows, key=lambda r: r["beta"])})


def _dataset(records):
    from dsnb.data.preference import preference_dataset

    return preference_dataset(records)


if __name__ == "__main__":
    main()

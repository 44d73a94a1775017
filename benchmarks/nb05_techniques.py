"""Curriculum, adversarial training, label smoothing and augmentation against one baseline (notebook 05).

Run:  python benchmarks/nb05_techniques.py [--steps 60] [--seeds 0 1 2] [--threads 1]

Every condition fine-tunes the course's tiny DeepSeek-V3 from the same base weights on the same
training examples (a small set, seen about three times, where regularisers have something to do),
with the same steps, batch and learning-rate schedule; only the technique changes. The curricula split
the training examples into thirds by length (``dsnb.train.curriculum.QUANTILE_STAGES``). Every
``--eval-every`` steps (4: often enough to see where each curve bottoms out) the held-out answer-token
NLL (validation split, no smoothing) is recorded; at the end: NLL, token accuracy, expected
calibration error with its reliability bins, the loss under an FGSM perturbation of the input
embeddings (epsilon 0.01) and seconds per step. Results,
mean and std over seeds, go to ``benchmarks/results/nb05_techniques.json``, which notebook 05
loads (the sweep takes longer than the notebook's time budget; this script regenerates it).
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).parent / "results" / "nb05_techniques.json"

CONDITIONS: dict[str, dict] = {
    "baseline": {},
    "curriculum (discrete)": {"curriculum": "discrete"},
    "curriculum (root)": {"curriculum": "root"},
    "FGSM eps=0.01": {"adversarial": "fgsm", "adversarial_epsilon": 0.01},
    "FGM eps=0.01": {"adversarial": "fgm", "adversarial_epsilon": 0.01},
    "label smoothing 0.1": {"label_smoothing": 0.1},
    "random deletion 15%": {"augment": "deletion"},
    "synonym replacement": {"augment": "synonym"},
}


def _sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def augmented_examples(train, tokenizer, method: str, wordnet=None) -> list[dict]:
    """The training examples plus one augmented copy of every summary example (``dsnb.train.chat.augment_data``)."""
    from dsnb.train.chat import augment_data

    return augment_data(train, tokenizer, method, seed=0, wordnet=wordnet).examples


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--train-examples", type=int, default=160)
    p.add_argument("--eval-examples", type=int, default=96)
    p.add_argument("--eval-every", type=int, default=4)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--conditions", nargs="+", default=list(CONDITIONS))
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 on a busy shared machine)")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)

    import torch
    from transformers import TrainerCallback

    from dsnb.cache import write_json_atomic
    from dsnb.data.augment import WordNetUnavailable, wordnet_reader
    from dsnb.data.corpus import course_corpus
    from dsnb.model.build import STAMP_KEY, build_stamp
    from dsnb.model.load import load_model
    from dsnb.model.pretrain import base_model_path
    from dsnb.train.adversarial import perturbed_loss
    from dsnb.train.calibration import answer_token_predictions, expected_calibration_error, reliability_bins
    from dsnb.train.chat import data_collator, load_sft_data, to_dataset
    from dsnb.train.config import FinetuneConfig
    from dsnb.train.sft import build_trainer

    if args.threads:
        torch.set_num_threads(args.threads)
    base, tok = load_model(base_model_path(), dtype=torch.float32)
    cfg0 = FinetuneConfig(train_examples=args.train_examples, eval_examples=args.eval_examples, max_steps=args.steps,
                          per_device_batch_size=args.batch, eval_steps=None, logging_steps=5)
    train, evald = load_sft_data(cfg0, tok, course_corpus())
    collate = data_collator(tok)

    def evaluate(model) -> dict:
        pred = answer_token_predictions(model, tok, evald.examples)
        return {"nll": pred.loss, "accuracy": pred.accuracy,
                "ece": expected_calibration_error(pred.confidence, pred.correct),
                "bins": reliability_bins(pred.confidence, pred.correct)}

    class Curve(TrainerCallback):
        def __init__(self) -> None:
            self.points: list[tuple[int, float]] = []
            self.seconds = 0.0

        def on_step_end(self, a, state, control, model=None, **kw):
            if state.global_step % args.eval_every == 0:
                t = time.perf_counter()
                self.points.append((state.global_step, answer_token_predictions(model, tok, evald.examples).loss))
                model.train()
                self.seconds += time.perf_counter() - t

    wordnet = None
    try:
        wordnet = wordnet_reader()
    except WordNetUnavailable as err:
        print(f"skipping synonym replacement: {err}", file=sys.stderr)
    data_for = {"": list(train.examples)}
    start = evaluate(base)
    runs: dict[str, list[dict]] = {}
    for name in args.conditions:
        cond = dict(CONDITIONS[name])
        method = cond.pop("augment", "")
        if method == "synonym" and wordnet is None:
            continue
        if method not in data_for:
            data_for[method] = augmented_examples(train, tok, method, wordnet)
        for seed in args.seeds:
            model = copy.deepcopy(base)
            curve = Curve()
            with tempfile.TemporaryDirectory() as out:
                cfg = cfg0.replace(seed=seed, output_dir=out, **cond)
                trainer = build_trainer(cfg, model, tok, to_dataset(data_for[method]), callbacks=[curve],
                                        progress=False)
                t0 = time.perf_counter()
                trainer.train()
                seconds = time.perf_counter() - t0
            result = evaluate(model)
            attacked = []
            for i in range(0, len(evald.examples), 32):
                batch = collate([dict(e) for e in evald.examples[i:i + 32]])
                attacked.append(perturbed_loss(model, batch, "fgsm", 0.01))
            logged = [r["loss"] for r in trainer.state.log_history if "loss" in r]
            run = {"seed": seed, **result, "curve": [(0, start["nll"]), *curve.points],
                   "fgsm_clean_loss": statistics.mean(c for c, _ in attacked),
                   "fgsm_attacked_loss": statistics.mean(a for _, a in attacked),
                   "seconds_per_step": (seconds - curve.seconds) / args.steps,
                   "train_examples": len(data_for[method]), "last_logged_loss": logged[-1] if logged else None}
            runs.setdefault(name, []).append(run)
            print(f"{name:24s} seed {seed}: nll {run['nll']:.3f} acc {run['accuracy']:.3f} ece {run['ece']:.3f} "
                  f"fgsm {run['fgsm_attacked_loss']:.3f} {run['seconds_per_step']:.2f} s/step", flush=True)
    summary = {}
    for name, rs in runs.items():
        summary[name] = {k: {"mean": statistics.mean(r[k] for r in rs), "std": _sd([r[k] for r in rs])}
                         for k in ("nll", "accuracy", "ece", "fgsm_attacked_loss", "seconds_per_step")}
    write_json_atomic(args.out, {
        "settings": {k: v for k, v in vars(args).items() if k != "out"}, "start": start, "runs": runs,
        "summary": summary, "machine": {"python": platform.python_version(), "torch": torch.__version__,
                                        "threads": torch.get_num_threads(), "processor": platform.machine()},
        STAMP_KEY: build_stamp()})
    base_nll = summary["baseline"]["nll"]["mean"] if "baseline" in summary else None
    for name, s in summary.items():
        gap = f" ({s['nll']['mean'] - base_nll:+.3f} vs baseline)" if base_nll is not None else ""
        print(f"{name:24s} nll {s['nll']['mean']:.3f} ± {s['nll']['std']:.3f}{gap}")
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

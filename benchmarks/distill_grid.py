"""Distillation vs CE alone on the course task: a grid of KL weights and temperatures over several seeds.

Run:  python benchmarks/distill_grid.py [--teacher-steps 120] [--student-steps 80] [--seeds 0 1 2]

Teacher: the course's tiny DeepSeek-V3 after SFT (notebook 03's recipe, shortened). Student: the same
base cut to fewer layers and routed experts (``dsnb.train.distill.shrink_model``). Every student is
trained for the same steps with ``CombinedLoss(1 - w, w, T)``; w = 0 is CE alone. Held-out answer
loss and token accuracy on the test split, mean ± std over seeds, are printed and saved to
``benchmarks/results/distill_grid.json``, which notebook 04 loads (the grid takes longer than the
notebook's time budget; this script regenerates it).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

OUT = Path(__file__).parent / "results" / "distill_grid.json"


def _sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher-steps", type=int, default=120)
    p.add_argument("--student-steps", type=int, default=80)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--kl-weights", type=float, nargs="+", default=[0.3, 0.7])
    p.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 2.0])
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--experts", type=int, default=4)
    p.add_argument("--test-examples", type=int, default=180)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)

    import torch

    from dsnb.cache import write_json_atomic
    from dsnb.data.corpus import course_corpus
    from dsnb.model.load import load_model
    from dsnb.train import chat, distill, evaluation, sft
    from dsnb.train.config import FinetuneConfig

    torch.manual_seed(0)
    t0 = time.perf_counter()
    corpus = course_corpus()
    base, tokenizer = load_model("dsnb-tiny", dtype=torch.float32)
    teacher_cfg = FinetuneConfig(max_steps=args.teacher_steps, learning_rate=3e-3, min_learning_rate=1e-4,
                                 eval_steps=None, save_steps=None, logging_steps=max(1, args.teacher_steps // 10),
                                 output_dir="runs/bench-distill-teacher")
    teacher = sft.run_sft(teacher_cfg, model=load_model("dsnb-tiny", dtype=torch.float32)[0], tokenizer=tokenizer,
                          corpus=corpus, progress=False)
    test = chat.load_split(teacher_cfg, tokenizer, "test", args.test_examples, corpus)
    student_cfg = teacher_cfg.replace(max_steps=args.student_steps, output_dir="runs/bench-distill-student",
                                      logging_steps=max(1, args.student_steps // 10))
    settings = [(0.0, 1.0)] + [(w, t) for w in args.kl_weights for t in args.temperatures]
    student0, counts = distill.shrink_model(base, args.layers, args.experts)
    reference = {"base": evaluation.completion_loss(base, tokenizer, test),
                 "teacher": evaluation.completion_loss(teacher.model, tokenizer, test),
                 "student before training": evaluation.completion_loss(student0, tokenizer, test)}
    rows: list[dict] = []
    for seed in args.seeds:  # saved after every seed, so an interrupted run keeps what it finished
        rows += distill.distil_students(student_cfg, teacher.model, base, tokenizer, test, settings, [seed],
                                        args.layers, args.experts, train_data=teacher.train)
        result = _result(args, argv, rows, test, base, student0, counts, reference, t0)
        write_json_atomic(args.out, result)
        print(f"seed {seed} done ({result['seconds']:.0f} s)", flush=True)
    print(f"teacher {reference['teacher']['loss']:.3f}, base {reference['base']['loss']:.3f}, "
          f"untrained student {reference['student before training']['loss']:.3f} (answer loss, nats)")
    print(f"{'kl_weight':>9s} {'T':>4s} {'loss mean':>10s} {'± std':>7s} {'acc mean':>9s} {'± std':>7s}")
    for w, t in settings:
        sel = [r for r in rows if r["kl_weight"] == w and r["temperature"] == t]
        loss, acc = [r["loss"] for r in sel], [r["token accuracy"] for r in sel]
        print(f"{w:>9.1f} {t:>4.0f} {statistics.mean(loss):>10.4f} {_sd(loss):>7.4f} "
              f"{statistics.mean(acc):>9.4f} {_sd(acc):>7.4f}")
    print(f"saved {args.out} ({result['seconds']:.0f} s)")
    return 0


def _result(args, argv, rows, test, base, student0, counts, reference, t0) -> dict:
    import platform

    import torch

    from dsnb.model.build import STAMP_KEY, build_stamp

    return {
        "what": "held-out answer loss / token accuracy of students trained with CombinedLoss(1-w, w, T); w=0 is CE alone",
        "command": "python benchmarks/distill_grid.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "teacher_steps": args.teacher_steps, "student_steps": args.student_steps, "seeds": sorted({r["seed"] for r in rows}),
        "student_layers": args.layers, "student_experts": args.experts, "test_examples": len(test),
        "parameters": {"teacher": sum(p.numel() for p in base.parameters()),
                       "student": sum(p.numel() for p in student0.parameters())},
        "student_init": counts,
        "reference": reference,
        "rows": rows,
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "threads": torch.get_num_threads()},
        STAMP_KEY: build_stamp(),
        "seconds": time.perf_counter() - t0,
    }


if __name__ == "__main__":
    sys.exit(main())

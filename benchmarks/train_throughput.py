"""Tokens/s of dsnb's SFT path vs a plain transformers.Trainer vs a minimal hand-written PyTorch loop.

Same model (the course's tiny DeepSeek-V3), same data, batch, optimizer (AdamW), schedule and steps,
measured in one run; printed as ratios. Target: dsnb within 5% of the raw loop and not slower than the
plain Trainer. Run: python benchmarks/train_throughput.py [--steps 60] [--repeats 2]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time

import torch
from transformers import PrinterCallback, Trainer, TrainingArguments, get_scheduler

from dsnb.data.corpus import course_corpus
from dsnb.model.load import base_model
from dsnb.train.chat import build_sft_data, data_collator, to_dataset
from dsnb.train.config import FinetuneConfig
from dsnb.train.sft import build_trainer


def _tokens(examples, steps, batch):
    n = steps * batch
    return sum(len(examples[i % len(examples)]["input_ids"]) for i in range(n))


def run_dsnb(model, tok, examples, steps, batch, out):
    cfg = FinetuneConfig(output_dir=out, max_steps=steps, per_device_batch_size=batch, eval_steps=None,
                         logging_steps=10, learning_rate=1e-3, min_learning_rate=1e-5)
    trainer = build_trainer(cfg, model, tok, to_dataset(examples), progress=False)
    t0 = time.perf_counter()
    trainer.train()
    return time.perf_counter() - t0


def run_plain_trainer(model, tok, examples, steps, batch, out):
    args = TrainingArguments(output_dir=out, max_steps=steps, per_device_train_batch_size=batch, learning_rate=1e-3,
                             lr_scheduler_type="polynomial", lr_scheduler_kwargs={"lr_end": 1e-5, "power": 1.0},
                             warmup_steps=max(1, steps // 20), logging_steps=10, save_strategy="no",
                             report_to="none", use_cpu=not torch.cuda.is_available(), disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=to_dataset(examples), data_collator=data_collator(tok))
    trainer.remove_callback(PrinterCallback)  # its log lines would only clutter the output
    t0 = time.perf_counter()
    trainer.train()
    return time.perf_counter() - t0


def run_raw_loop(model, tok, examples, steps, batch, out):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).train()
    collate = data_collator(tok)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    sched = get_scheduler("polynomial", opt, num_warmup_steps=max(1, steps // 20), num_training_steps=steps,
                          scheduler_specific_kwargs={"lr_end": 1e-5, "power": 1.0})
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(examples), generator=g).tolist()
    t0 = time.perf_counter()
    for step in range(steps):
        idx = [order[(step * batch + i) % len(order)] for i in range(batch)]
        b = {k: v.to(device) for k, v in collate([dict(examples[i]) for i in idx]).items()}
        loss = model(**b).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args()
    model, tok = base_model(dtype=torch.float32)
    examples = build_sft_data(course_corpus().pairs_in("train"), tok, limit=2000).examples
    tokens = _tokens(examples, a.steps, a.batch)
    runners = {"dsnb": run_dsnb, "plain Trainer": run_plain_trainer, "raw loop": run_raw_loop}
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(a.repeats):  # interleaved, so background load hits every path alike
        for name, fn in runners.items():
            torch.manual_seed(0)
            with tempfile.TemporaryDirectory() as out:
                times[name].append(fn(copy.deepcopy(model), tok, examples, a.steps, a.batch, out))
    rate = {k: tokens / statistics.median(v) for k, v in times.items()}
    for k, v in rate.items():
        print(f"{k:14s} {v:10.0f} tokens/s  (median of {a.repeats}, {a.steps} steps x {a.batch})")
    print(f"dsnb / raw loop      = {rate['dsnb'] / rate['raw loop']:.3f}  (target >= 0.95)")
    print(f"dsnb / plain Trainer = {rate['dsnb'] / rate['plain Trainer']:.3f}  (target >= 1.00)")


if __name__ == "__main__":
    main()

"""``run_checklist``: every pre-flight check on a recipe (or a Trainer), a model and its data, as one table.

The checks that need no training come first (data, batch, learning rate, warmup, floor, pad token,
precision, data shift). If none of them fails, a short run of the recipe's first steps on a copy of
the model measures the rest (gradient-norm stability, GPU utilisation and memory reserve on a GPU, the
thread count, compressed checkpoints); if one fails, those rows say they were not run and why: fix
the failed rows first. Nothing here raises on bad data or a bad recipe; it reports.

Taught in notebook 11; ``python -m dsnb.checklist configs/sft/tiny.yaml`` runs it from a shell.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase, Trainer, TrainingArguments

from dsnb.checklist import checks
from dsnb.checklist.checks import CheckRow
from dsnb.checklist.shift import data_shift
from dsnb.checklist.trials import checkpoint_round_trip, short_run, time_threads
from dsnb.train.chat import to_dataset
from dsnb.train.config import ConfigError, FinetuneConfig, launch_state, resolve_precision
from dsnb.train.trainable import prepare_model

logger = logging.getLogger(__name__)


@dataclass
class Checklist:
    """The rows of one checklist run (``rows``), plus what the short run and the timings measured."""

    rows: list[CheckRow]
    measurements: dict[str, Any]

    @property
    def failed(self) -> list[CheckRow]:
        return [r for r in self.rows if r.status == "fail"]

    @property
    def ok(self) -> bool:
        """No row failed (warnings and not-applicable rows allowed)."""
        return not self.failed

    def row(self, name: str) -> CheckRow:
        """The row whose name starts with ``name``."""
        hits = [r for r in self.rows if r.name.startswith(name)]
        if not hits:
            raise KeyError(f"no check named {name!r}; checks: {[r.name for r in self.rows]}")
        return hits[0]

    def to_frame(self):
        """The table as a ``pandas.DataFrame`` (one row per check)."""
        import pandas as pd

        return pd.DataFrame([{k: v for k, v in dataclasses.asdict(r).items() if k != "value"} for r in self.rows])

    def to_text(self) -> str:
        """The table as aligned plain text (what ``run_checklist`` prints)."""
        cols = ("status", "name", "measured", "threshold")
        cells = [[r.status.upper(), r.name, r.measured, r.threshold] for r in self.rows]
        width = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
        line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, width, strict=True)).rstrip()  # noqa: E731
        out = [line(cols), line(["-" * w for w in width])]
        for r, cell in zip(self.rows, cells, strict=True):
            out.append(line(cell))
            if r.status != "pass":
                out.append(" " * (width[0] + 2) + "↳ " + r.reason)
        counts = {s: sum(r.status == s for r in self.rows) for s in checks.STATUSES}
        out.append(", ".join(f"{n} {s}" for s, n in counts.items() if n))
        return "\n".join(out)


@dataclass
class _Plan:
    """What the static checks read, from a ``FinetuneConfig`` or from a Trainer's arguments."""

    per_device: int
    accumulation: int
    global_batch: int | None
    learning_rate: float
    min_learning_rate: float
    warmup_steps: int
    max_steps: int
    method: str
    precision: str | None
    precision_error: str | None
    max_seq_len: int | None = None  # None (a Trainer): the longest row is checked instead


def _plan_from_config(cfg: FinetuneConfig) -> _Plan:
    from dsnb.train.schedules import scaled_warmup_steps

    try:
        precision, error = resolve_precision(cfg.precision), None
    except ConfigError as exc:
        precision, error = None, str(exc)
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else scaled_warmup_steps(cfg.max_steps)
    return _Plan(cfg.per_device_batch_size, cfg.gradient_accumulation_steps, cfg.global_batch_size,
                 cfg.learning_rate, cfg.min_learning_rate, warmup, cfg.max_steps, cfg.method, precision, error,
                 cfg.max_seq_len)


def _plan_from_args(args: TrainingArguments, model: nn.Module) -> _Plan:
    kwargs = args.lr_scheduler_kwargs or {}
    floor = kwargs.get("lr_end", kwargs.get("min_lr", 0.0)) if isinstance(kwargs, dict) else 0.0
    precision = "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"
    method = "lora" if hasattr(model, "peft_config") else "full"
    return _Plan(args.per_device_train_batch_size, args.gradient_accumulation_steps, None, args.learning_rate,
                 float(floor), args.get_warmup_steps(args.max_steps), args.max_steps, method, precision, None)


def _rows_of(dataset: Any) -> list[Any]:
    if dataset is None:
        return []
    if hasattr(dataset, "examples"):  # dsnb.train.chat.SFTData
        return list(dataset.examples)
    return list(dataset)


def _reference_sequences(reference: Any, tokenizer: PreTrainedTokenizerBase | None) -> list[list[int]] | None:
    """Token-id lists of the reference corpus (texts are tokenized with ``tokenizer``)."""
    if reference is None:
        return None
    items = list(reference)
    if items and isinstance(items[0], str):
        if tokenizer is None:
            raise ValueError("a reference corpus of texts needs the tokenizer")
        return tokenizer(items, add_special_tokens=False, verbose=False)["input_ids"]
    return [list(x) for x in items]


def _parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def static_rows(plan: _Plan, processes: int, model: nn.Module, tokenizer: Any, rows: list[Any],
                reference: Any = None) -> list[CheckRow]:
    """The checks that need no training run."""
    params = _parameters(model)
    cuda = torch.cuda.is_available()
    lengths = [len(ids) for r in rows if (ids := checks._ids(r, "input_ids"))]
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    out = [checks.check_rows(rows), checks.check_labels(rows),
           checks.check_batch(plan.per_device, plan.accumulation, processes, plan.global_batch, len(rows)),
           checks.check_sequence_length(plan.max_seq_len, context, max(lengths, default=None)),
           checks.check_learning_rate(plan.learning_rate, params, plan.method),
           checks.check_warmup(plan.warmup_steps, plan.max_steps),
           checks.check_floor(plan.min_learning_rate, plan.learning_rate),
           checks.check_pad_token(tokenizer),
           checks.check_precision(plan.precision, getattr(getattr(model, "config", None), "model_type", None), cuda,
                                  cuda and torch.cuda.is_bf16_supported(), plan.precision_error)]
    good = [r for r in rows if isinstance(r, dict) and r.get("input_ids") is not None and len(r["input_ids"])]
    if reference is None:
        out += checks.check_shift(None)
    elif not good:
        out += checks.check_shift(None, "no rows with tokens (see the data check)")
    else:
        try:
            ref = _reference_sequences(reference, tokenizer)
            skip = set(getattr(tokenizer, "all_special_ids", []) or [])
            out += checks.check_shift(data_shift([list(r["input_ids"]) for r in good], ref, skip))
        except (ValueError, TypeError) as exc:
            out += [dataclasses.replace(r, status="fail", reason=f"the reference corpus: {exc}")
                    for r in checks.check_shift(None)]
    return out


def _run_rows(run: Any, timing: dict[str, float] | None, ck: dict[str, Any] | None, reason: str,
              window: int) -> list[CheckRow]:
    if run is None:
        return [checks.check_grad_norms(None, window, reason), checks.check_gpu_utilisation(None, reason),
                checks.check_memory_reserve(None, None, reason),
                checks.not_applicable(f"torch.set_num_threads({checks.ARTICLE_THREADS})", "threads ≤ usable cores",
                                      reason),
                checks.check_checkpoint(None, reason)]
    failed = f"the short run failed: {run.error}" if run.error else ""
    grad = (checks.check_grad_norms(run.grad_norms, window) if not run.error else
            CheckRow("gradient-norm stability", "fail", f"{run.steps} steps", f"CV < {checks.GRAD_CV_LIMIT}", failed))
    threads = (checks.check_threads(int(timing["cores"]), int(timing["default_threads"]), timing["default_s"],
                                    timing["article_s"], load=timing.get("load")) if timing else
               checks.not_applicable(f"torch.set_num_threads({checks.ARTICLE_THREADS})", "threads ≤ usable cores",
                                     "not timed (measure_threads=False)"))
    return [grad, checks.check_gpu_utilisation(run.utilisation, run.utilisation_reason),
            checks.check_memory_reserve(run.peak_bytes, run.total_bytes, run.memory_reason, oom=run.oom), threads,
            checks.check_checkpoint(ck, failed or "no checkpoint written (measure_checkpoint=False)")]


def run_checklist(
    trainer_or_config: Trainer | FinetuneConfig,
    model: nn.Module | None = None,
    dataset: Any = None,
    reference_corpus: Sequence[str] | Sequence[Sequence[int]] | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    processes: int | None = None,
    steps: int = 12,
    window: int = 8,
    measure_threads: bool = True,
    measure_checkpoint: bool = True,
    verbose: bool = True,
) -> Checklist:
    """Run the pre-flight checklist; print the table (``verbose``) and return it.

    ``trainer_or_config``: a ``FinetuneConfig`` (with ``model``, its ``tokenizer`` and the training
    ``dataset``: a ``dsnb.train.chat.SFTData``, a ``datasets.Dataset`` or a list of tokenized rows) or a
    ``transformers.Trainer`` (its model, tokenizer, data and collator are used where not given).
    ``reference_corpus``: the pretraining text (strings, tokenized with ``tokenizer``, or token-id lists)
    the data shift is measured against; without it the shift rows are not applicable. ``processes``:
    the number of training processes to check the batch against (default: this launch's). The short run
    trains ``steps`` steps of the recipe's schedule on a copy of the model (one more copy of the weights
    in memory) and judges the gradient norms of its last ``window`` steps.
    """
    trainer = trainer_or_config if isinstance(trainer_or_config, Trainer) else None
    if trainer is not None:
        model = model if model is not None else trainer.model
        tokenizer = tokenizer or trainer.processing_class
        dataset = dataset if dataset is not None else trainer.train_dataset
        plan = _plan_from_args(trainer.args, model)
    elif isinstance(trainer_or_config, FinetuneConfig):
        plan = _plan_from_config(trainer_or_config)
    else:
        raise TypeError(f"run_checklist takes a FinetuneConfig or a transformers.Trainer, not "
                        f"{type(trainer_or_config).__name__}")
    if model is None:
        raise TypeError("run_checklist needs the model (e.g. dsnb.model.load.load_model(cfg.model))")
    processes = processes or (trainer.args.world_size if trainer is not None else launch_state().num_processes)
    rows = _rows_of(dataset)
    out = static_rows(plan, processes, model, tokenizer, rows, reference_corpus)
    failed = [r.name for r in out if r.status == "fail"]
    measurements: dict[str, Any] = {}
    if failed:
        out += _run_rows(None, None, None, f"not run: fix the failed rows first ({', '.join(failed)})", window)
    else:
        with tempfile.TemporaryDirectory(prefix="dsnb-checklist-") as tmp:
            run, timing, ck, reason = _measure(trainer_or_config, model, tokenizer, rows, tmp, steps, processes,
                                               measure_threads, measure_checkpoint)
            measurements.update(short_run=run, threads=timing, checkpoint=ck)
            if run is None:  # the run could not start: one failed row with the reason, the rest not run
                first, *rest = _run_rows(None, None, None, "not run: the short run could not be set up "
                                         "(see gradient-norm stability)", window)
                out += [dataclasses.replace(first, status="fail", reason=reason), *rest]
            else:
                out += _run_rows(run, timing, ck, reason, window)
    result = Checklist(out, measurements)
    if verbose:
        print(result.to_text(), flush=True)
    return result


def _measure(source: Trainer | FinetuneConfig, model: nn.Module, tokenizer: Any, rows: list[Any], tmp: str,
             steps: int, processes: int, measure_threads: bool, measure_checkpoint: bool):
    """The short run (and the timings on its model copy); (run, timing, checkpoint stats, reason)."""
    try:
        if isinstance(source, Trainer):
            args = dataclasses.replace(source.args, output_dir=tmp, logging_steps=1, eval_strategy="no",
                                       save_strategy="no", load_best_model_at_end=False, report_to=[],
                                       disable_tqdm=True)
            trainer = Trainer(model=copy.deepcopy(model), args=args, train_dataset=to_dataset(rows),
                              data_collator=source.data_collator, processing_class=tokenizer)
        else:
            from dsnb.train.sft import build_trainer

            cfg = source.replace(output_dir=tmp, logging_steps=1, eval_steps=None, save_steps=None,
                                 early_stopping_patience=None, report_to="none", compress_checkpoints=False)
            if steps > cfg.max_steps:
                steps = cfg.max_steps
            run_model, _ = prepare_model(copy.deepcopy(model), cfg)
            trainer = build_trainer(cfg, run_model, tokenizer, to_dataset(rows), progress=False,
                                    args=cfg.training_arguments(processes))
    except Exception as exc:  # noqa: BLE001 - reported as failed rows
        logger.debug("could not build the short run", exc_info=True)
        return None, None, None, f"could not set up the short run: {type(exc).__name__}: {exc}"
    run = short_run(trainer, steps)
    timing = ck = None
    if measure_threads and not run.error:
        batch = trainer.data_collator([dict(r) for r in rows[: trainer.args.per_device_train_batch_size]])
        timing = time_threads(trainer.model, dict(batch))
    if measure_checkpoint and run.checkpoint is not None:
        ck = checkpoint_round_trip(run.checkpoint)
    return run, timing, ck, ""

"""The pre-flight checks, one function each: a measured value against a threshold, as one table row.

Every function here decides; none measures (``dsnb.checklist.trials`` runs the short run, the thread
timing and the checkpoint round trip; ``dsnb.checklist.run`` puts them together). Each returns a
``CheckRow`` whose status is ``pass``, ``warn``, ``fail`` or ``n.a.`` (not applicable, with the reason),
so a bad input becomes a ``fail`` row that says what to do, never an exception.

Thresholds and where they come from (claims C29–C31 of the article; the rest are the usual DeepSeek
fine-tuning pitfalls):

- data shift < 0.30 (the article's "< 30%", read as a Jensen–Shannon divergence, see ``shift``);
- the global batch a multiple of the process count (C30), the per-device batch no larger than the data, and
  the sequence length within the model's context window;
- GPU utilisation > 80% (C30), sampled through NVML;
- gradient norm stable (C30): coefficient of variation over the last steps < 0.3 (the same ±30% band the
  training monitor alerts on, notebook 07);
- 20% of GPU memory kept free (C31); the article's fixed ``torch.set_num_threads(4)`` (C31) against the
  cores this process may use; Zstandard checkpoints (C31) saving at least 5% of the bytes;
- peak learning rate, warmup share and floor within usual ranges; pad token distinct from EOS; bf16
  rather than fp16 for DeepSeek checkpoints; at least one label per example that is not -100.

Taught in notebook 11.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dsnb.checklist.shift import SHIFT_THRESHOLD, Shift
from dsnb.train.config import BatchSizeError, plan_batch

STATUSES = ("pass", "warn", "fail", "n.a.")

UTILISATION_TARGET = 0.80  # C30: "GPU utilisation > 80%"
MEMORY_RESERVE = 0.20  # C31: keep 20% of GPU memory free
GRAD_CV_LIMIT = 0.30  # gradient-norm coefficient of variation: the monitor's 1.0 ± 0.3 band, as a relative spread
ARTICLE_THREADS = 4  # C31: torch.set_num_threads(4)
MIN_CHECKPOINT_SAVING = 0.05  # compression earns its time when it saves at least 5% of the bytes
WARMUP_RANGE = (0.01, 0.10)  # the article's recipe: 500 of 10 000 steps = 5%
MAX_FLOOR_SHARE = 0.10  # floor / peak learning rate; the article's 1e-6 / 3e-5 = 3.3%
SMALL_MODEL = 100_000_000  # below this many parameters (the course's tiny models) larger learning rates are usual
DEEPSEEK_TYPES = ("deepseek_v2", "deepseek_v3", "deepseek_v32")


@dataclass
class CheckRow:
    """One line of the checklist: what was checked, the verdict, the measured value beside its threshold."""

    name: str
    status: str
    measured: str
    threshold: str
    reason: str
    value: float | None = None  # the number behind ``measured`` (None where there is none)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r}: use one of {STATUSES}")


def not_applicable(name: str, threshold: str, reason: str) -> CheckRow:
    """A row for a check that cannot run here, saying why."""
    return CheckRow(name, "n.a.", "—", threshold, reason)


# ---- data ----
def _ids(row: Any, key: str) -> list[int] | None:
    if not isinstance(row, dict) or row.get(key) is None:
        return None
    value = row[key]
    return value.tolist() if hasattr(value, "tolist") else list(value)


def check_rows(rows: Sequence[Any]) -> CheckRow:
    """Fail if the dataset is empty or any row has no ``input_ids`` (an empty row makes an empty batch)."""
    threshold = "no empty rows"
    if not rows:
        return CheckRow("data: rows", "fail", "0 rows", threshold, "the dataset is empty: nothing to train on", 0)
    empty = [i for i, r in enumerate(rows) if not _ids(r, "input_ids")]
    if empty:
        return CheckRow("data: rows", "fail", f"{len(empty)} of {len(rows)} rows empty", threshold,
                        f"rows {empty[:5]}{'...' if len(empty) > 5 else ''} have no input_ids: drop them before "
                        "training (an empty batch gives a NaN or a crash)", len(empty))
    return CheckRow("data: rows", "pass", f"0 of {len(rows)} rows empty", threshold, "every row has tokens", 0)


def check_labels(rows: Sequence[Any]) -> CheckRow:
    """Fail if any example has no label other than -100: its loss is 0/0 (NaN) or it teaches nothing."""
    threshold = "every row has a label ≠ -100"
    with_ids = [r for r in rows if _ids(r, "input_ids")]
    if not with_ids:
        return not_applicable("labels not all -100", threshold, "no rows with tokens (see the data check)")
    missing = [i for i, r in enumerate(with_ids) if _ids(r, "labels") is None]
    if missing:
        return CheckRow("labels not all -100", "fail", f"{len(missing)} rows without labels", threshold,
                        "rows need a labels list (-100 on the prompt, the token ids on the answer)", len(missing))
    labels = [_ids(r, "labels") for r in with_ids]
    none = [i for i, lab in enumerate(labels) if all(t == -100 for t in lab)]
    total = sum(len(lab) for lab in labels)
    share = sum(t != -100 for lab in labels for t in lab) / max(total, 1)
    if none:
        return CheckRow("labels not all -100", "fail", f"{len(none)} of {len(labels)} rows all -100", threshold,
                        "these rows have no answer token in the loss (a cut-off answer or a wrong template mask): "
                        "an all -100 batch gives a NaN loss", len(none))
    return CheckRow("labels not all -100", "pass", f"{share:.0%} of tokens in the loss", threshold,
                    f"all {len(labels)} rows have answer tokens", share)


def check_shift(shift: Shift | None, reason: str = "no reference corpus given") -> list[CheckRow]:
    """Two rows: the JS divergence (the article's < 30%) and the share of tokens unseen in the reference."""
    js_t, unseen_t = f"JS < {SHIFT_THRESHOLD:.2f} bits", f"< {SHIFT_THRESHOLD:.0%} of tokens"
    if shift is None:
        return [not_applicable("data shift (JS divergence)", js_t, reason),
                not_applicable("tokens unseen in the reference", unseen_t, reason)]
    big = shift.js_bits >= SHIFT_THRESHOLD
    js = CheckRow("data shift (JS divergence)", "warn" if big else "pass",
                  f"{shift.js_bits:.3f} bits (TV {shift.total_variation:.2f})", js_t,
                  ("the fine-tuning data is far from the pretraining data: expect forgetting; mix in some "
                   "pretraining-style data or use LoRA" if big else "the token distribution stays close to the reference")
                  + f" ({shift.finetune_tokens:,} vs {shift.reference_tokens:,} tokens)", shift.js_bits)
    many = shift.unseen_share >= SHIFT_THRESHOLD
    unseen = CheckRow("tokens unseen in the reference", "warn" if many else "pass", f"{shift.unseen_share:.1%}",
                      unseen_t, "much of the vocabulary is new to the base model" if many else
                      "the base model has seen (nearly) every token type of the data", shift.unseen_share)
    return [js, unseen]


# ---- the recipe ----
def check_batch(per_device: int, accumulation: int, processes: int, global_batch: int | None = None,
                rows: int | None = None) -> CheckRow:
    """C30: the global batch must be a multiple of the process count (and of per-device × processes).

    With ``rows`` (the training rows at hand), a per-device batch larger than the data fails too: every
    step would hold all the rows, not the batch the recipe's learning rate was chosen for.
    """
    threshold = f"global batch divisible by {processes} process{'es' if processes > 1 else ''}"
    if rows and per_device > rows:
        return CheckRow("batch vs processes", "fail", f"per-device batch {per_device:,} > {rows:,} rows", threshold,
                        f"per_device_batch_size={per_device:,} but only {rows:,} training rows: every step would hold "
                        f"all {rows:,} rows, not the batch the recipe plans; lower per_device_batch_size (or check "
                        "with more rows)", per_device)
    if global_batch is None:
        eff = per_device * accumulation * processes
        return CheckRow("batch vs processes", "pass", f"effective batch {eff} = {per_device} × {accumulation} × "
                        f"{processes}", threshold, "derived from the per-device batch: divisible by construction", eff)
    try:
        acc = plan_batch(global_batch, per_device, processes)
    except BatchSizeError as exc:
        return CheckRow("batch vs processes", "fail", f"global batch {global_batch} on {processes}", threshold,
                        str(exc), global_batch)
    return CheckRow("batch vs processes", "pass", f"global batch {global_batch} = {per_device} × {acc} × {processes}",
                    threshold, "each process gets the same share", global_batch)


def check_sequence_length(max_seq_len: int | None, context: int | None, longest_row: int | None = None) -> CheckRow:
    """The recipe's ``max_seq_len`` (or, without one, the longest row) within the model's context window."""
    name = "sequence length ≤ context"
    threshold = f"≤ {context:,} positions" if context else "≤ the model's context"
    if not context:
        return not_applicable(name, threshold, "the model's config gives no max_position_embeddings")
    length = max_seq_len if max_seq_len is not None else longest_row
    if length is None:
        return not_applicable(name, threshold, "no rows with tokens (see the data check)")
    what = f"max_seq_len={max_seq_len}" if max_seq_len is not None else f"the longest row ({longest_row} tokens)"
    if length > context:
        return CheckRow(name, "fail", f"{length:,} > {context:,}", threshold,
                        f"{what} but the model has {context} positions: positions past them were never trained "
                        f"(or do not exist); set max_seq_len to at most {context}", length)
    return CheckRow(name, "pass", f"{length:,} of {context:,}", threshold, f"{what} fits the model's {context} positions",
                    length)


def lr_range(parameters: int, method: str) -> tuple[float, float]:
    """The usual peak learning rates: full fine-tuning of large models, LoRA, and tiny course models."""
    if parameters < SMALL_MODEL:
        return 1e-5, 1e-2
    return (1e-5, 1e-3) if method == "lora" else (1e-6, 1e-4)


def check_learning_rate(lr: float, parameters: int, method: str = "full") -> CheckRow:
    """Peak LR inside the usual range (warn up to 10× outside it, fail beyond)."""
    low, high = lr_range(parameters, method)
    threshold = f"{low:.0e} … {high:.0e}"
    kind = "a model under 100M parameters" if parameters < SMALL_MODEL else f"{method} fine-tuning of a large model"
    if not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
        return CheckRow("learning rate", "fail", repr(lr), threshold, "the learning rate must be a positive number")
    if low <= lr <= high:
        return CheckRow("learning rate", "pass", f"{lr:.1e}", threshold, f"usual for {kind}", lr)
    status = "warn" if low / 10 <= lr <= high * 10 else "fail"
    why = ("too high: the first NaN losses come from here; lower it" if lr > high else
           "so low that training barely moves")
    return CheckRow("learning rate", status, f"{lr:.1e}", threshold, f"{why} ({kind})", lr)


def check_warmup(warmup_steps: int, max_steps: int) -> CheckRow:
    """Warmup as a share of the run: 1–10% (the article's 500 of 10 000 is 5%)."""
    lo, hi = WARMUP_RANGE
    threshold = f"{lo:.0%} … {hi:.0%} of the steps"
    if max_steps < 1 or warmup_steps < 0:
        return CheckRow("warmup", "fail", f"{warmup_steps} of {max_steps}", threshold, "steps must be positive")
    share = warmup_steps / max_steps
    if warmup_steps >= max_steps:
        return CheckRow("warmup", "fail", f"{warmup_steps} of {max_steps} steps", threshold,
                        "the run never reaches its peak learning rate: shorten the warmup", share)
    if lo <= share <= hi:
        return CheckRow("warmup", "pass", f"{warmup_steps} of {max_steps} steps ({share:.1%})", threshold,
                        "a short linear warmup, as in the article's recipe", share)
    return CheckRow("warmup", "warn", f"{warmup_steps} of {max_steps} steps ({share:.1%})", threshold,
                    "no warmup: the first large updates of Adam can break a pretrained model" if share < lo else
                    "a long warmup spends much of the run below the peak", share)


def check_floor(min_lr: float, lr: float) -> CheckRow:
    """The decay's floor: below the peak, at most 10% of it (the article: 1e-6 under a 3e-5 peak)."""
    threshold = f"0 ≤ floor ≤ {MAX_FLOOR_SHARE:.0%} of the peak"
    if not lr > 0 or min_lr < 0 or min_lr >= lr:
        return CheckRow("learning-rate floor", "fail", f"{min_lr:.1e} vs peak {lr:.1e}", threshold,
                        "the floor must be non-negative and below the peak")
    share = min_lr / lr
    return CheckRow("learning-rate floor", "pass" if share <= MAX_FLOOR_SHARE else "warn",
                    f"{min_lr:.1e} ({share:.1%} of the peak)", threshold,
                    "the schedule decays to a small floor" if share <= MAX_FLOOR_SHARE else
                    "the schedule hardly decays: the last steps train at nearly the peak rate", share)


def check_pad_token(tokenizer: Any) -> CheckRow:
    """Fail if the pad token is missing or is the EOS token (the model would learn never to stop)."""
    threshold = "pad ≠ EOS"
    if tokenizer is None:
        return not_applicable("pad token ≠ EOS", threshold, "no tokenizer given")
    pad, eos = getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)
    if pad is None:
        return CheckRow("pad token ≠ EOS", "fail", "no pad token", threshold,
                        "add a pad token of its own (tokenizer.add_special_tokens({'pad_token': ...}) and resize the "
                        "embeddings); do not reuse EOS")
    if pad == eos:
        return CheckRow("pad token ≠ EOS", "fail", f"pad = EOS = {pad}", threshold,
                        "padding with EOS: if padded positions are masked, EOS is masked too and the fine-tuned model "
                        "never learns to stop; give padding a token of its own")
    return CheckRow("pad token ≠ EOS", "pass", f"pad {pad}, EOS {eos}", threshold, "distinct tokens")


def check_precision(resolved: str | None, model_type: str | None, cuda: bool, bf16_gpu: bool,
                    error: str | None = None) -> CheckRow:
    """bf16 rather than fp16 for DeepSeek checkpoints; ``error`` is the config's own precision error, if any."""
    threshold = "bf16 (fp32 on CPU); never fp16 for DeepSeek"
    if error is not None:
        return CheckRow("precision", "fail", "invalid", threshold, error)
    deepseek = model_type is not None and ("deepseek" in model_type)
    if resolved == "fp16":
        return CheckRow("precision", "fail" if deepseek else "warn", "fp16", threshold,
                        "DeepSeek models were trained in bf16/FP8; fp16's range (max 65504) overflows into NaN "
                        "losses: use bf16" if deepseek else "fp16 needs loss scaling and can overflow; prefer bf16")
    if resolved == "bf16":
        return CheckRow("precision", "pass", "bf16", threshold, "the range of fp32 at half the memory")
    if cuda and bf16_gpu:
        return CheckRow("precision", "warn", "fp32", threshold, "this GPU has bf16: fp32 doubles weight and "
                        "activation memory for no gain")
    return CheckRow("precision", "pass", resolved or "fp32", threshold,
                    "fp32 on a CPU (no GPU here); use bf16 on a GPU" if not cuda else "fp32 on a GPU without bf16")


# ---- measured in a short run ----
def check_grad_norms(norms: Sequence[float] | None, window: int = 8, reason: str = "") -> CheckRow:
    """C30: gradient norm stable = coefficient of variation (std / mean) over the last ``window`` steps < 0.3."""
    threshold = f"CV < {GRAD_CV_LIMIT} over the last {window} steps"
    if norms is None:
        return not_applicable("gradient-norm stability", threshold, reason or "no short run")
    last = [float(n) for n in list(norms)[-window:]]
    if len(last) < 2:
        return CheckRow("gradient-norm stability", "fail", f"{len(last)} norms", threshold,
                        "too few logged gradient norms: run more steps (logging_steps=1)")
    bad = [n for n in last if not math.isfinite(n)]
    if bad:
        return CheckRow("gradient-norm stability", "fail", f"{len(bad)} non-finite of {len(last)}", threshold,
                        "NaN/Inf gradients: lower the learning rate, use bf16, check the inputs (StabilityGuard)")
    mean = sum(last) / len(last)
    cv = (sum((n - mean) ** 2 for n in last) / (len(last) - 1)) ** 0.5 / mean if mean > 0 else float("inf")
    status = "pass" if cv < GRAD_CV_LIMIT else ("warn" if cv < 1 else "fail")
    return CheckRow("gradient-norm stability", status, f"CV {cv:.2f} (mean {mean:.2f})", threshold,
                    "steady gradients" if status == "pass" else
                    "the gradient norm swings: lower the learning rate or lengthen the warmup", cv)


def check_gpu_utilisation(samples: Sequence[float] | None, reason: str = "") -> CheckRow:
    """C30: mean GPU utilisation (NVML, fractions 0–1) over the short run's steps > 80%."""
    threshold = f"> {UTILISATION_TARGET:.0%}"
    if samples is None:
        return not_applicable("GPU utilisation", threshold, reason or "no CUDA GPU")
    if not samples:
        return CheckRow("GPU utilisation", "warn", "no samples", threshold, "the run was too short to sample")
    mean = sum(samples) / len(samples)
    ok = mean > UTILISATION_TARGET
    return CheckRow("GPU utilisation", "pass" if ok else "warn", f"{mean:.0%} ({len(samples)} samples)", threshold,
                    "the GPU is kept busy" if ok else "the GPU waits: raise the batch (or accumulation), use more "
                    "DataLoader workers, pack sequences", mean)


def check_memory_reserve(peak_bytes: int | None, total_bytes: int | None, reason: str = "",
                         oom: bool = False) -> CheckRow:
    """C31: the run's peak reserved GPU memory stays within 80% of the card (20% kept free)."""
    limit = 1 - MEMORY_RESERVE
    threshold = f"peak ≤ {limit:.0%} of GPU memory"
    if oom:
        return CheckRow("GPU memory reserve", "fail", f"> {limit:.0%}", threshold,
                        f"the run ran out of memory under set_per_process_memory_fraction({limit}): lower the batch, "
                        "turn on gradient checkpointing or use LoRA")
    if peak_bytes is None or not total_bytes:
        return not_applicable("GPU memory reserve", threshold, reason or "no CUDA GPU")
    share = peak_bytes / total_bytes
    ok = share <= limit
    return CheckRow("GPU memory reserve", "pass" if ok else "fail",
                    f"{peak_bytes / 2**30:.1f} of {total_bytes / 2**30:.0f} GiB ({share:.0%})", threshold,
                    "room left for longer batches and fragmentation" if ok else
                    "closer to the limit than 80%: a longer batch will run out of memory", share)


def check_threads(cores: int, default_threads: int, seconds_default: float | None, seconds_article: float | None,
                  article_threads: int = ARTICLE_THREADS, load: float | None = None) -> CheckRow:
    """C31: what a fixed ``torch.set_num_threads(4)`` does here, against the default thread count.

    ``load``: the machine's 1-minute load average while timing; above the core count the machine is shared,
    and the scheduler gives CPU time per thread, so more threads can look faster by taking it from others.
    """
    threshold = f"threads ≤ {cores} usable cores"
    if seconds_default is None or seconds_article is None:
        return not_applicable(f"torch.set_num_threads({article_threads})", threshold, "not timed")
    ratio = seconds_article / seconds_default
    measured = f"{ratio:.2f}× the step time of the default {default_threads}"
    if article_threads > cores:
        shared = (f"; faster here only under a load of {load:.1f} on {cores} cores: more threads likely take CPU time "
                  "from the other processes, which is no speed-up of the step itself"
                  if ratio < 1 and load is not None and load > cores else "")
        return CheckRow(f"torch.set_num_threads({article_threads})", "warn", measured, threshold,
                        f"{article_threads} threads on {cores} cores oversubscribe them; keep torch's default "
                        f"(one per core) or set it from os.sched_getaffinity{shared}", ratio)
    return CheckRow(f"torch.set_num_threads({article_threads})", "pass" if ratio <= 1.1 else "warn", measured,
                    threshold, f"{article_threads} threads fit the {cores} cores" if ratio <= 1.1 else
                    "slower than the default here: keep the default", ratio)


def check_checkpoint(stats: dict[str, float] | None, reason: str = "") -> CheckRow:
    """C31: Zstandard-compressed checkpoints: the stored/original size ratio and the extra save/load time."""
    threshold = f"saves ≥ {MIN_CHECKPOINT_SAVING:.0%} of the bytes"
    if stats is None:
        return not_applicable("Zstandard checkpoints", threshold, reason or "no checkpoint written")
    if not stats.get("verified", False):
        return CheckRow("Zstandard checkpoints", "fail", "round trip failed", threshold,
                        "the decompressed checkpoint does not match the saved one")
    ratio = stats["ratio"]
    measured = (f"{ratio:.2f}× the size; save +{stats['save_extra_s']:.2f} s, "
                f"load +{stats['load_extra_s']:.2f} s")
    ok = 1 - ratio >= MIN_CHECKPOINT_SAVING
    return CheckRow("Zstandard checkpoints", "pass" if ok else "warn", measured, threshold,
                    f"{stats['bytes'] / 2**20:.0f} MiB → {stats['stored_bytes'] / 2**20:.0f} MiB (weights, optimizer "
                    "and trainer state)" if ok else "fp32/bf16 weights are close to incompressible here: compression "
                    "costs time for little space", ratio)

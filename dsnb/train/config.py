"""The fine-tuning recipe: ``FinetuneConfig`` and the checks on it.

``FinetuneConfig`` is a small dataclass whose fields map one-to-one onto
``transformers.TrainingArguments`` (``FinetuneConfig.training_arguments``) plus the data and model
choices (tasks, LoRA or full, layers to freeze, dropout, packing). Loaded from YAML by
``python -m dsnb.train``. ``plan_batch`` / ``effective_batch``: per-device batch × accumulation ×
processes (claims C14, C30); a global batch the process count does not divide is rejected.
``resolve_precision`` picks bf16 / fp16 / fp32 for the hardware at hand.

Taught in notebook 03.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from transformers import (
    TrainingArguments,
)

from dsnb.model.arguments import course_training_arguments
from dsnb.train.schedules import scaled_warmup_steps, schedule_arguments
from dsnb.values import parse_value

logger = logging.getLogger(__name__)


TASKS = ("summary", "next_line", "dialogue")


DEFAULT_TASKS = ("summary", "next_line")


METHODS = ("full", "lora")


STAGES = ("sft", "dpo")
AUGMENTATIONS = ("deletion", "swap", "synonym")  # dsnb.data.augment.METHODS (notebook 05)


DPO_LOSS_TYPES = ("sigmoid", "ipo")


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


class BatchSizeError(ValueError):
    """The requested batch sizes cannot be met by this number of processes; the message says what to do."""


class ConfigError(ValueError):
    """A fine-tuning config is invalid; the message says which field and what to do."""


@dataclass
class FinetuneConfig:
    """Everything one SFT run needs. Training fields map one-to-one onto ``TrainingArguments``.

    The CPU defaults fine-tune the course's tiny DeepSeek-V3 in well under a minute; the shipped
    ``configs/sft/*.yaml`` recipes set the values for real checkpoints. ``extra_training_arguments``
    passes any other ``TrainingArguments`` field through unchanged (e.g. ``fsdp``, ``deepspeed``).
    """

    # model
    model: str = "dsnb-tiny"
    model_type: str | None = None  # the architecture a recipe expects (checked after loading)
    method: str = "full"  # "full" or "lora"
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_experts: bool = False  # also adapt fused routed-expert tensors (peft target_parameters)
    # DeepSeek-V3's router-bias balancing during full fine-tuning (dsnb.model.routing.ExpertBiasBalancer, notebook 01):
    # the step of the bias after every optimizer step; 0 keeps the bias fixed, as a plain Trainer does. Not with LoRA:
    # the bias is a buffer of the frozen base model and a saved adapter would not carry it.
    bias_update_rate: float = 0.0
    freeze_first_layers: int = 0  # claim C18: keep the first N decoder layers (and embeddings) fixed
    dropout: float | None = None  # override the model's attention dropout (None keeps it)
    # data
    tasks: tuple[str, ...] = DEFAULT_TASKS  # "dialogue" adds notebook 02's cleaned conversations
    max_seq_len: int = 128
    packing: bool = False
    train_examples: int | None = None  # None: every training pair
    eval_examples: int | None = 256
    # optimisation -> TrainingArguments
    output_dir: str = "runs/sft"
    max_steps: int = 200
    per_device_batch_size: int = 16
    gradient_accumulation_steps: int = 1
    global_batch_size: int | None = None  # if set, accumulation is derived from it (and checked)
    learning_rate: float = 2e-3
    min_learning_rate: float = 2e-5  # the floor of the linear decay (C10: 1e-6 at 3e-5 peak)
    warmup_steps: int | None = None  # None: the real recipe's 500/10 000 fraction of max_steps
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    label_smoothing: float = 0.0
    # notebook 05: curriculum by difficulty (dsnb.train.curriculum), adversarial embeddings (dsnb.train.adversarial)
    curriculum: str | None = None  # None, "discrete" (stages at max_seq_len/4, /2), "linear" or "root" pacing
    curriculum_steps: int | None = None  # steps per stage (discrete) or ramp steps (None: a third / half of max_steps)
    adversarial: str | None = None  # None, "fgsm", "fgm" or "pgd": perturb the input embeddings each step
    adversarial_epsilon: float = 0.01
    adversarial_steps: int = 1  # PGD's K
    augment: str | None = None  # None, "deletion", "swap" or "synonym": one augmented copy of each summary answer
    augment_rate: float = 0.15  # share of words "deletion" removes (the article's 15%)
    precision: str = "auto"
    gradient_checkpointing: bool = False
    early_stopping_patience: int | None = None
    logging_steps: int = 10
    eval_steps: int | None = 50
    save_steps: int | None = None
    save_total_limit: int | None = 2
    compress_checkpoints: bool = False
    seed: int = 0
    report_to: str = "none"
    extra_training_arguments: dict[str, Any] = field(default_factory=dict)
    # preference tuning (notebook 06): stage "dpo" trains on (prompt, chosen, rejected) pairs
    stage: str = "sft"  # "sft" (dsnb.train.sft) or "dpo" (dsnb.train.dpo); python -m dsnb.train dispatches on it
    beta: float = 0.1  # DPO's β: how far the policy may move from the reference
    dpo_loss_type: str = "sigmoid"  # "sigmoid" (DPO) or "ipo"

    def __post_init__(self) -> None:
        self.tasks = _as_tasks(self.tasks)
        for f in fields(self):  # YAML 1.1 reads "1e-5" (no dot) as a string; parse_value reads it as a number
            value = getattr(self, f.name)
            if isinstance(value, str) and "float" in str(f.type):
                number = parse_value(value)
                if isinstance(number, bool) or not isinstance(number, int | float):
                    raise ConfigError(f"{f.name}={value!r}: expected a number")
                setattr(self, f.name, float(number))
        check_fields(self)
        if self.method not in METHODS:
            raise ConfigError(f"method={self.method!r}: use one of {METHODS}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision={self.precision!r}: use one of {PRECISIONS}")
        if self.stage not in STAGES:
            raise ConfigError(f"stage={self.stage!r}: use one of {STAGES}")
        if self.dpo_loss_type not in DPO_LOSS_TYPES or not self.beta > 0:
            raise ConfigError(f"dpo_loss_type={self.dpo_loss_type!r}, beta={self.beta}: use one of {DPO_LOSS_TYPES} "
                              "and a positive beta (0.1 is the usual start)")
        if self.augment is not None and self.augment not in AUGMENTATIONS:
            raise ConfigError(f"augment={self.augment!r}: use one of {AUGMENTATIONS} or null")
        unknown = set(self.tasks) - set(TASKS)
        if unknown or not self.tasks:
            raise ConfigError(f"tasks={self.tasks!r}: choose one or more of {TASKS}")
        if self.max_steps < 1 or self.per_device_batch_size < 1 or self.gradient_accumulation_steps < 1:
            raise ConfigError("max_steps, per_device_batch_size and gradient_accumulation_steps must be >= 1")
        if self.min_learning_rate >= self.learning_rate:
            raise ConfigError(
                f"min_learning_rate ({self.min_learning_rate}) must be below learning_rate ({self.learning_rate})"
            )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FinetuneConfig:
        """Build from a mapping (e.g. parsed YAML); unknown keys raise ``ConfigError`` naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown config keys {unknown}; valid keys are {sorted(known)}")
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | Path) -> FinetuneConfig:
        """Load a recipe such as ``configs/sft/tiny.yaml``.

        A file that is not UTF-8, not YAML or empty raises ``ConfigError`` naming it (and the line); an
        empty recipe is refused rather than read as "all defaults": write ``{}`` for that.
        """
        import yaml

        from dsnb.data.records import NotUTF8, read_utf8
        from dsnb.values import load_yaml

        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"config file {path} is a directory, not a recipe file; pass a YAML file such as "
                              "configs/sft/tiny.yaml")
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; see configs/sft/ for examples")
        try:
            text = read_utf8(path)
        except NotUTF8 as exc:
            raise ConfigError(f"{path}: {exc}") from None
        try:
            values = load_yaml(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            raise ConfigError(f"{path}: not valid YAML ({getattr(exc, 'problem', None) or exc}{where}); compare it "
                              "with configs/sft/tiny.yaml") from None
        if values is None:
            raise ConfigError(f"{path} is empty: write the recipe's keys (start from configs/sft/tiny.yaml), or "
                              "'{}' to train on the defaults on purpose")
        if not isinstance(values, dict):
            raise ConfigError(f"{path} must hold a mapping of config keys, not {type(values).__name__}")
        return cls.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (YAML/JSON friendly)."""
        d = asdict(self)
        d["tasks"] = list(self.tasks)
        return d

    def replace(self, **changes: Any) -> FinetuneConfig:
        """A copy with some fields changed."""
        return FinetuneConfig.from_dict({**self.to_dict(), **changes})

    def accumulation_for(self, processes: int) -> int:
        """Gradient accumulation steps for ``processes`` processes (from ``global_batch_size`` if set)."""
        if self.global_batch_size is None:
            return self.gradient_accumulation_steps
        return plan_batch(self.global_batch_size, self.per_device_batch_size, processes)

    def training_arguments(
        self, processes: int | None = None, args_class: type[TrainingArguments] = TrainingArguments, **extra: Any
    ) -> TrainingArguments:
        """The ``TrainingArguments`` this config stands for (one field each, plus the schedule).

        ``args_class`` builds a subclass instead (e.g. TRL's ``DPOConfig``), with ``extra`` fields set.
        """
        processes = processes or launch_state().num_processes
        precision = resolve_precision(self.precision)
        warmup = self.warmup_steps if self.warmup_steps is not None else scaled_warmup_steps(self.max_steps)
        evaluate = self.eval_steps is not None
        values: dict[str, Any] = dict(
            output_dir=self.output_dir,
            max_steps=self.max_steps,
            per_device_train_batch_size=self.per_device_batch_size,
            per_device_eval_batch_size=self.per_device_batch_size,
            gradient_accumulation_steps=self.accumulation_for(processes),
            learning_rate=self.learning_rate,
            weight_decay=self.weight_decay,
            max_grad_norm=self.max_grad_norm,
            label_smoothing_factor=self.label_smoothing,
            bf16=precision == "bf16",
            fp16=precision == "fp16",
            activation_checkpointing=self.gradient_checkpointing,  # transformers 5's name for it
            activation_checkpointing_kwargs={"use_reentrant": False} if self.gradient_checkpointing else None,
            logging_steps=self.logging_steps,
            eval_strategy="steps" if evaluate else "no",
            eval_steps=self.eval_steps,
            save_strategy="steps" if self.save_steps else "no",
            save_steps=self.save_steps or 500,
            save_total_limit=self.save_total_limit,
            seed=self.seed,
            data_seed=self.seed,
            report_to=self.report_to,
            ddp_find_unused_parameters=False,
            **schedule_arguments(warmup, self.min_learning_rate),
        )
        if self.early_stopping_patience is not None:
            if not evaluate:
                raise ConfigError("early_stopping_patience needs eval_steps (it stops on the eval loss)")
            values.update(metric_for_best_model="eval_loss", greater_is_better=False)
            if self.save_steps:
                values.update(load_best_model_at_end=True, save_steps=self.eval_steps)
        values.update(extra)
        values.update(self.extra_training_arguments)
        return course_training_arguments(args_class, **values)


def launch_state() -> PartialState:
    """accelerate's view of this launch: ``num_processes`` and ``is_main_process`` under torchrun or
    ``accelerate launch`` (1 process and main otherwise).

    Asked with ``cpu=`` as ``training_arguments`` sets ``use_cpu``: on a CPU-only machine a plain
    ``PartialState()`` ignores the launcher and reports one process.
    """
    return PartialState(cpu=not torch.cuda.is_available())


def effective_batch(per_device: int, accumulation: int, processes: int = 1) -> int:
    """Sequences per optimizer step: per-device batch × accumulation steps × processes (claim C14)."""
    return per_device * accumulation * processes


def plan_batch(global_batch: int, per_device: int, processes: int) -> int:
    """The accumulation steps that reach ``global_batch`` with ``per_device`` on ``processes`` processes.

    Raises ``BatchSizeError`` if the global batch is not a multiple of the process count (claim C30's
    rule), or if the per-process share is not a multiple of the per-device batch.
    """
    if global_batch < 1 or per_device < 1 or processes < 1:
        raise BatchSizeError("global batch, per-device batch and process count must all be >= 1")
    if global_batch % processes:
        raise BatchSizeError(
            f"global batch {global_batch} is not a multiple of the {processes} processes: each process would "
            f"see a different number of sequences. Use a multiple of {processes} (e.g. "
            f"{(global_batch // processes + 1) * processes}) or change the number of processes."
        )
    share = global_batch // processes
    if share % per_device:
        raise BatchSizeError(
            f"each of the {processes} processes must contribute {share} sequences per step, which is not a "
            f"multiple of per_device_batch_size={per_device}. Pick a per-device batch that divides {share}."
        )
    return share // per_device


def resolve_precision(precision: str = "auto") -> str:
    """``"fp32"``, ``"bf16"`` or ``"fp16"`` for this machine.

    ``auto``: bf16 on a GPU that supports it (DeepSeek models were trained in bf16; fp16 is a known
    source of NaN losses), fp16 with a loss scaler on older GPUs, fp32 on CPUs (bf16 autocast works on
    CPU too, but is slower than fp32 on CPUs without bf16 units: notebook 08 measures it).
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision={precision!r}: use one of {PRECISIONS}")
    cuda = torch.cuda.is_available()
    if precision == "auto":
        if not cuda:
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16" and not cuda:
        raise ConfigError("precision='fp16' needs a CUDA GPU (the loss scaler is GPU-only); use 'bf16' or 'fp32' on CPU")
    if precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise ConfigError("this GPU has no bf16 support; use precision='fp16' (with loss scaling) or 'fp32'")
    return precision


def _as_tasks(tasks: Any) -> tuple[str, ...]:
    """``tasks`` as a tuple; a bare string (``tasks: summary``) is refused rather than split into letters."""
    if isinstance(tasks, str) or not isinstance(tasks, list | tuple):
        raise ConfigError(f"tasks={tasks!r}: expected a list of task names, e.g. tasks: [summary] "
                          f"(choose from {TASKS})")
    return tuple(tasks)


#: TrainingArguments fields that ``FinetuneConfig.training_arguments`` sets from a config field (or
#: derives): setting them in ``extra_training_arguments`` would silently change a run behind the
#: config's back (``output_dir`` there splits the run from its checkpoints), so they are refused.
OWNED_TRAINING_ARGUMENTS = {
    "output_dir": "output_dir", "max_steps": "max_steps",
    "per_device_train_batch_size": "per_device_batch_size", "per_device_eval_batch_size": "per_device_batch_size",
    "gradient_accumulation_steps": "gradient_accumulation_steps (or global_batch_size)",
    "learning_rate": "learning_rate", "weight_decay": "weight_decay", "max_grad_norm": "max_grad_norm",
    "label_smoothing_factor": "label_smoothing", "bf16": "precision", "fp16": "precision",
    "activation_checkpointing": "gradient_checkpointing", "gradient_checkpointing": "gradient_checkpointing",
    "logging_steps": "logging_steps", "eval_strategy": "eval_steps", "eval_steps": "eval_steps",
    "save_strategy": "save_steps", "save_steps": "save_steps", "save_total_limit": "save_total_limit",
    "seed": "seed", "data_seed": "seed", "report_to": "report_to", "warmup_steps": "warmup_steps",
    "lr_scheduler_type": "min_learning_rate (the schedule is fixed: warmup then linear decay to the floor)",
    "lr_scheduler_kwargs": "min_learning_rate", "metric_for_best_model": "early_stopping_patience",
    "greater_is_better": "early_stopping_patience", "load_best_model_at_end": "early_stopping_patience",
}

#: Range rules: field -> (lowest allowed, whether the lowest is excluded, highest excluded or None).
_RANGES: dict[str, tuple[float, bool, float | None]] = {
    **dict.fromkeys(("max_steps", "per_device_batch_size", "gradient_accumulation_steps", "max_seq_len",
                     "logging_steps", "lora_r", "global_batch_size", "train_examples", "eval_examples",
                     "eval_steps", "save_steps", "save_total_limit", "early_stopping_patience"), (1, False, None)),
    **dict.fromkeys(("freeze_first_layers", "warmup_steps", "seed", "weight_decay", "min_learning_rate",
                     "max_grad_norm", "bias_update_rate"), (0, False, None)),
    **dict.fromkeys(("learning_rate", "lora_alpha"), (0, True, None)),
    **dict.fromkeys(("label_smoothing", "lora_dropout", "dropout", "augment_rate"), (0, False, 1)),
}


def _type_problem(value: Any, hint: Any) -> str | None:
    """Why ``value`` does not fit the annotation ``hint`` (None if it fits)."""
    import types
    import typing

    args = typing.get_args(hint)
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        args = typing.get_args(hint)
    if value is None:
        return "expected a value, not null"
    origin = typing.get_origin(hint) or hint
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "a string",
             tuple: "a list", dict: "a mapping"}
    if origin not in names:
        return None  # an annotation this check does not know (checked where the field is used)
    wanted = names[origin]
    ok = {bool: isinstance(value, bool),
          int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, int | float) and not isinstance(value, bool),
          str: isinstance(value, str),
          tuple: isinstance(value, tuple) and all(isinstance(v, str) for v in value),
          dict: isinstance(value, dict)}[origin]
    if ok:
        return None
    problem = f"expected {wanted}, got {value!r} ({type(value).__name__})"
    if isinstance(value, str) and origin in (bool, int, float):
        problem += "; write the value without quotes"
        if origin is bool:
            problem += " (any non-empty string would switch the feature on)"
    return problem


def check_fields(cfg: FinetuneConfig) -> None:
    """Every field against its annotation and its allowed range; ``ConfigError`` naming the field if not.

    ``packing: "false"`` (a quoted string that would read as true), ``max_steps: 10.7``, ``eval_steps: 0``
    and negative rates are refused here instead of running something other than what was typed; so are NaN
    and infinity in every number field (a range test such as ``value < low`` is False for NaN).
    """
    import typing

    hints = typing.get_type_hints(type(cfg))
    problems = []
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        problem = _type_problem(value, hints[f.name])
        if problem:
            problems.append(f"{f.name}: {problem}")
            continue
        if hints[f.name] in (float, float | None) and isinstance(value, int):
            setattr(cfg, f.name, value := float(value))
        if isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{f.name}: {value!r} is not a finite number")
            continue
        if f.name in _RANGES and value is not None:
            low, open_low, high = _RANGES[f.name]
            if value < low or (open_low and value == low) or (high is not None and value >= high):
                span = (f"{'>' if open_low else '>='} {low}" if high is None else f"in [{low}, {high})")
                allow_null = type(None) in typing.get_args(hints[f.name])
                problems.append(f"{f.name}: {value!r} must be {span}" + (" (or null)" if allow_null else ""))
    owned = sorted(set(cfg.extra_training_arguments) & set(OWNED_TRAINING_ARGUMENTS)) if isinstance(
        cfg.extra_training_arguments, dict) else []
    for key in owned:
        problems.append(f"extra_training_arguments.{key}: set by the config field "
                        f"{OWNED_TRAINING_ARGUMENTS[key]}; set it there instead")
    if isinstance(cfg.extra_training_arguments, dict):
        valid = {f.name for f in fields(TrainingArguments)}
        for key in sorted(set(cfg.extra_training_arguments) - valid - set(owned)):
            problems.append(f"extra_training_arguments.{key}: not a TrainingArguments field")
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))

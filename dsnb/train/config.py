"""The fine-tuning recipe: ``FinetuneConfig``, its sections, the stages that read them, and the checks.

``FinetuneConfig`` holds every choice of one run: the model (and LoRA), the data, the optimisation
(mapped onto ``transformers.TrainingArguments`` by ``FinetuneConfig.training_arguments``), notebook 05's
curriculum, adversarial and augmentation techniques, DPO's preference settings, GRPO's rewards and sampling
(section ``rl``, notebook 12) and where checkpoints go. Loaded from YAML by ``python -m dsnb.train``. ``plan_batch`` / ``effective_batch``: per-device
batch × accumulation × processes (claims C14, C30); a global batch the process count does not divide
is rejected. ``resolve_precision`` picks bf16 / fp16 / fp32 for the hardware at hand.

Sections and stages. Every field belongs to one section (``SECTIONS``), and every stage declares the
sections it reads, less the few fields of those it leaves alone (``STAGES``). A field set away from its
default where the stage does not read it is refused, naming the field, its section and the stage
(``curriculum: linear`` with ``stage: dpo`` used to be dropped without a word). A new stage is one
``Stage`` entry (and its runner); a new section is its name in ``SECTIONS`` and fields tagged with it.
The object stays flat (``cfg.learning_rate``), the section being metadata on each field: every module,
benchmark and notebook reads the flat attributes and builds ``FinetuneConfig(learning_rate=...)``,
which a nested object would break for no gain. Recipes are written in sections (``optimisation:
{learning_rate: ...}``); flat recipes, ``section.field`` keys and ``--set section.field=value`` load to
the same config, and ``to_dict`` writes the sectioned form ``from_dict`` reads back.

Why a dataclass and not pydantic: the checks are one type test and one range per field, with messages
that say what to do (``write the value without quotes``, ``(or null)``); pydantic's lax mode would coerce
the quoted values the course refuses (``max_steps: "100"``, ``packing: "no"``), its strict mode and its
messages would need a translation layer about as long as ``check_fields``, and it is not a dependency of
training (only of the server extra).
The ranges now sit on the fields with their sections, and the ``TrainingArguments`` the config owns are
read off the table ``training_arguments`` builds from, rather than restated.

Taught in notebook 03.
"""

from __future__ import annotations

import difflib
import functools
import logging
import math
from collections.abc import Mapping
from dataclasses import MISSING, Field, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from transformers import (
    TrainingArguments,
)

from dsnb.model.trainer_defaults import course_training_arguments
from dsnb.train.schedules import scaled_warmup_steps, schedule_arguments
from dsnb.values import parse_value

logger = logging.getLogger(__name__)


TASKS = ("summary", "next_line", "dialogue")


DEFAULT_TASKS = ("summary", "next_line")


METHODS = ("full", "lora")


AUGMENTATIONS = ("deletion", "swap", "synonym")  # dsnb.data.augment.METHODS (notebook 05)


DPO_LOSS_TYPES = ("sigmoid", "ipo")


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


GRPO_LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo")  # TRL's loss_type values dsnb.train.grpo writes out (notebook 12)


GRPO_SCALE_REWARDS = ("group", "batch", "none")


VLLM_MODES = ("colocate", "server")


#: The sections of a recipe, in the order ``to_dict`` writes them (``stage`` stands above them all).
SECTIONS = ("model", "data", "optimisation", "curriculum", "adversarial", "augment", "preference", "rl", "checkpoints")


@dataclass(frozen=True)
class Stage:
    """What one training stage reads of a recipe: whole sections, less the fields it leaves alone (and why)."""

    sections: tuple[str, ...]
    skips: Mapping[str, str] = field(default_factory=dict)  # field of a read section -> why the stage ignores it

    def reads(self, name: str) -> bool:
        """Whether this stage reads the config field ``name``."""
        return name == "stage" or (FIELD_SECTIONS[name] in self.sections and name not in self.skips)


#: The training stages (``python -m dsnb.train`` dispatches on ``stage``) and what each reads, from their code:
#: ``dsnb.train.sft`` (with chat, curriculum, adversarial, prepare), ``dsnb.train.dpo`` and ``dsnb.train.grpo``.
STAGES: dict[str, Stage] = {
    "sft": Stage(tuple(s for s in SECTIONS if s not in ("preference", "rl"))),
    "dpo": Stage(("model", "data", "optimisation", "preference", "checkpoints"), skips={
        "bias_update_rate": "DPO does not balance the router bias (no ExpertBiasBalancer in dsnb.train.dpo)",
        "tasks": "DPO trains on the corpus's summary preference pairs whatever the tasks",
        "packing": "DPO batches preference pairs unpacked",
        "label_smoothing": "TRL's DPO loss does not use the Trainer's label smoothing",
        "early_stopping_patience": "DPO runs have no early stopping",
    }),
    "grpo": Stage(("model", "data", "optimisation", "rl", "checkpoints"), skips={
        "tasks": "GRPO samples bodies for the corpus's function heads (dsnb.train.rewards) whatever the tasks",
        "packing": "GRPO batches prompt + completion sequences unpacked",
        "label_smoothing": "GRPO's loss has no labels to smooth",
        "early_stopping_patience": "GRPO's eval loss does not measure the reward; its runs have no early stopping",
    }),
}


class BatchSizeError(ValueError):
    """The requested batch sizes cannot be met by this number of processes; the message says what to do."""


class ConfigError(ValueError):
    """A fine-tuning config is invalid; the message says which field and what to do."""


def _setting(section: str | None, default: Any = None, *, factory: Any = None, at_least: float | None = None,
             above: float | None = None, below: float | None = None) -> Any:
    """A config field: its default, its recipe section and its allowed range (checked by ``check_fields``).

    ``at_least`` / ``above``: the lowest value, allowed or excluded; ``below``: the excluded highest.
    """
    metadata = {"section": section, "at_least": at_least, "above": above, "below": below}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class FinetuneConfig:
    """Everything one training run needs, grouped in sections (the recipe files' layout).

    The CPU defaults fine-tune the course's tiny DeepSeek-V3 in well under a minute; the shipped
    ``configs/sft/*.yaml`` and ``configs/dpo/*.yaml`` recipes set the values for real checkpoints.
    ``extra_training_arguments`` passes any other ``TrainingArguments`` field through unchanged (e.g.
    ``fsdp``, ``deepspeed``).
    """

    stage: str = _setting(None, "sft")  # "sft" (dsnb.train.sft), "dpo" (dsnb.train.dpo) or "grpo" (dsnb.train.grpo)
    # model
    model: str = _setting("model", "dsnb-tiny")
    model_type: str | None = _setting("model")  # the architecture a recipe expects (checked after loading)
    method: str = _setting("model", "full")  # "full" or "lora"
    lora_r: int = _setting("model", 8, at_least=1)
    lora_alpha: int = _setting("model", 16, above=0)
    lora_dropout: float = _setting("model", 0.0, at_least=0, below=1)
    lora_experts: bool = _setting("model", False)  # also adapt fused routed-expert tensors (peft target_parameters)
    # DeepSeek-V3's router-bias balancing during full fine-tuning (dsnb.model.routing.ExpertBiasBalancer, notebook 01):
    # the step of the bias after every optimizer step; 0 keeps the bias fixed, as a plain Trainer does. Not with LoRA:
    # the bias is a buffer of the frozen base model and a saved adapter would not carry it.
    bias_update_rate: float = _setting("model", 0.0, at_least=0)
    freeze_first_layers: int = _setting("model", 0, at_least=0)  # claim C18: keep the first N decoder layers fixed
    dropout: float | None = _setting("model", None, at_least=0, below=1)  # the model's attention dropout (None keeps it)
    # data
    tasks: tuple[str, ...] = _setting("data", DEFAULT_TASKS)  # "dialogue" adds notebook 02's cleaned conversations
    max_seq_len: int = _setting("data", 128, at_least=1)
    packing: bool = _setting("data", False)
    train_examples: int | None = _setting("data", None, at_least=1)  # None: every training pair
    eval_examples: int | None = _setting("data", 256, at_least=1)
    # optimisation -> TrainingArguments
    max_steps: int = _setting("optimisation", 200, at_least=1)
    per_device_batch_size: int = _setting("optimisation", 16, at_least=1)
    gradient_accumulation_steps: int = _setting("optimisation", 1, at_least=1)
    global_batch_size: int | None = _setting("optimisation", None, at_least=1)  # sets the accumulation (checked)
    learning_rate: float = _setting("optimisation", 2e-3, above=0)
    min_learning_rate: float = _setting("optimisation", 2e-5, at_least=0)  # the decay's floor (C10: 1e-6 at 3e-5)
    warmup_steps: int | None = _setting("optimisation", None, at_least=0)  # None: the real 500/10 000 of max_steps
    weight_decay: float = _setting("optimisation", 0.0, at_least=0)
    max_grad_norm: float = _setting("optimisation", 1.0, at_least=0)
    label_smoothing: float = _setting("optimisation", 0.0, at_least=0, below=1)
    precision: str = _setting("optimisation", "auto")
    gradient_checkpointing: bool = _setting("optimisation", False)
    seed: int = _setting("optimisation", 0, at_least=0)
    extra_training_arguments: dict[str, Any] = _setting("optimisation", factory=dict)
    # notebook 05: curriculum by difficulty (dsnb.train.curriculum), adversarial embeddings (dsnb.train.adversarial),
    # augmented answers (dsnb.data.augment)
    curriculum: str | None = _setting("curriculum")  # None, "discrete", "linear", "root" (stages: thirds of the training set by length)
    curriculum_steps: int | None = _setting("curriculum")  # per stage (discrete) or ramp (None: a third / half of max_steps)
    adversarial: str | None = _setting("adversarial")  # None, "fgsm", "fgm" or "pgd": perturb the input embeddings
    adversarial_epsilon: float = _setting("adversarial", 0.01)
    adversarial_steps: int = _setting("adversarial", 1)  # PGD's K
    augment: str | None = _setting("augment")  # None, "deletion", "swap" or "synonym": one augmented copy of a summary
    augment_rate: float = _setting("augment", 0.15, at_least=0, below=1)  # share of words "deletion" removes (15%)
    # preference tuning (notebook 06): stage "dpo" trains on (prompt, chosen, rejected) pairs
    beta: float = _setting("preference", 0.1)  # DPO's β: how far the policy may move from the reference
    dpo_loss_type: str = _setting("preference", "sigmoid")  # "sigmoid" (DPO) or "ipo"
    # reinforcement learning with verifiable rewards (notebook 12): stage "grpo" samples num_generations completions per
    # prompt, scores them with the named rewards (dsnb.train.rewards.REWARDS) and trains on group-relative advantages
    rewards: tuple[str, ...] = _setting("rl", ("statements",))
    num_generations: int = _setting("rl", 8, at_least=2)  # G: completions per prompt, the group of the advantage
    max_completion_length: int = _setting("rl", 64, at_least=1)  # tokens sampled per completion
    temperature: float = _setting("rl", 1.0, above=0)  # sampling temperature (the log-probs are taken at it too)
    num_iterations: int = _setting("rl", 1, at_least=1)  # μ: optimizer steps on each generated batch
    clip_epsilon: float = _setting("rl", 0.2, at_least=0, below=1)  # ε of the clipped surrogate
    kl_coef: float = _setting("rl", 0.04, at_least=0)  # β of the KL term to the reference (0: no reference at all)
    grpo_loss_type: str = _setting("rl", "dapo")  # how token losses are averaged: one of GRPO_LOSS_TYPES
    scale_rewards: str = _setting("rl", "group")  # divide advantages by the group's std ("group"), the batch's, or not
    use_vllm: bool = _setting("rl", False)  # generate with vLLM (GPU) instead of model.generate
    vllm_mode: str = _setting("rl", "colocate")  # "colocate" (vLLM in the training process) or "server"
    vllm_gpu_memory_utilization: float = _setting("rl", 0.3, at_least=0, below=1)  # colocate: vLLM's share of the GPU
    # checkpoints: where the run writes, how often it logs, evaluates and saves
    output_dir: str = _setting("checkpoints", "runs/sft")
    logging_steps: int = _setting("checkpoints", 10, at_least=1)
    eval_steps: int | None = _setting("checkpoints", 50, at_least=1)
    save_steps: int | None = _setting("checkpoints", None, at_least=1)
    save_total_limit: int | None = _setting("checkpoints", 2, at_least=1)
    early_stopping_patience: int | None = _setting("checkpoints", None, at_least=1)
    compress_checkpoints: bool = _setting("checkpoints", False)
    report_to: str = _setting("checkpoints", "none")

    def __post_init__(self) -> None:
        self.tasks = _as_tasks(self.tasks)
        self.rewards = _as_names(self.rewards, "rewards")
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
            raise ConfigError(f"stage={self.stage!r}: use one of {tuple(STAGES)}")
        if self.dpo_loss_type not in DPO_LOSS_TYPES or not self.beta > 0:
            raise ConfigError(f"dpo_loss_type={self.dpo_loss_type!r}, beta={self.beta}: use one of {DPO_LOSS_TYPES} "
                              "and a positive beta (0.1 is the usual start)")
        self._check_rl()
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
        check_stage(self)

    def _check_rl(self) -> None:
        """The rl section's named choices (the ranges are on the fields)."""
        from dsnb.train.rewards import REWARDS

        unknown = [r for r in self.rewards if r not in REWARDS]
        if unknown or not self.rewards:
            raise ConfigError(f"rewards={list(self.rewards)!r}: choose one or more of {sorted(REWARDS)} "
                              "(dsnb.train.rewards.REWARDS)")
        for name, value in (("clip_epsilon", self.clip_epsilon), ("vllm_gpu_memory_utilization",
                                                                 self.vllm_gpu_memory_utilization)):
            if not value > 0:
                raise ConfigError(f"{name}: {value!r} must be in (0, 1)")
        for name, value, allowed in (("grpo_loss_type", self.grpo_loss_type, GRPO_LOSS_TYPES),
                                     ("scale_rewards", self.scale_rewards, GRPO_SCALE_REWARDS),
                                     ("vllm_mode", self.vllm_mode, VLLM_MODES)):
            if value not in allowed:
                raise ConfigError(f"{name}={value!r}: use one of {allowed}")
        if self.stage == "grpo" and self.max_completion_length >= self.max_seq_len:
            raise ConfigError(f"max_completion_length={self.max_completion_length} leaves no room for a prompt in "
                              f"max_seq_len={self.max_seq_len} (prompt + completion); raise max_seq_len")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> FinetuneConfig:
        """Build from a mapping (e.g. parsed YAML), sectioned or flat (``recipe_values``)."""
        return cls(**recipe_values(values))

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
        """The recipe in sections, plain values (YAML/JSON friendly); ``from_dict`` reads it back.

        Only what the stage reads is written: every other field is at its default (``check_stage``).
        """
        stage = STAGES[self.stage]
        values = asdict(self)
        values["tasks"] = list(self.tasks)
        values["rewards"] = list(self.rewards)
        sections = {s: {n: values[n] for n in _fields_of(s) if stage.reads(n)} for s in stage.sections}
        return {"stage": self.stage, **{s: sections[s] for s in SECTIONS if s in sections}}

    def replace(self, **changes: Any) -> FinetuneConfig:
        """A copy with some fields changed (``field=...``, ``**{"section.field": ...}`` or ``section={...}``)."""
        return FinetuneConfig(**{**asdict(self), **recipe_values(changes)})

    def accumulation_for(self, processes: int) -> int:
        """Gradient accumulation steps for ``processes`` processes (from ``global_batch_size`` if set)."""
        if self.global_batch_size is None:
            return self.gradient_accumulation_steps
        return plan_batch(self.global_batch_size, self.per_device_batch_size, processes)

    def owned_arguments(self, processes: int) -> dict[str, tuple[Any, str | None]]:
        """Every ``TrainingArguments`` field the config sets: name -> (value, the config field it comes from).

        The one table ``training_arguments`` builds from and ``owned_training_arguments`` reads; a field
        with no config field (None) is a course default that ``extra_training_arguments`` may change.
        """
        precision = resolve_precision(self.precision)
        warmup = self.warmup_steps if self.warmup_steps is not None else scaled_warmup_steps(self.max_steps)
        evaluate = self.eval_steps is not None
        stop_early = self.early_stopping_patience is not None
        if stop_early and not evaluate:
            raise ConfigError("early_stopping_patience needs eval_steps (it stops on the eval loss)")
        best_at_end = stop_early and bool(self.save_steps)  # then checkpoints follow the evaluations
        schedule = schedule_arguments(warmup, self.min_learning_rate)
        fixed = "min_learning_rate (the schedule is fixed: warmup then linear decay to the floor)"
        return {
            **{name: (getattr(self, source), source) for name, source in _COPIED_ARGUMENTS.items()},
            "gradient_accumulation_steps": (self.accumulation_for(processes),
                                            "gradient_accumulation_steps (or global_batch_size)"),
            "bf16": (precision == "bf16", "precision"),
            "fp16": (precision == "fp16", "precision"),
            "activation_checkpointing": (self.gradient_checkpointing, "gradient_checkpointing"),  # transformers 5's name
            "activation_checkpointing_kwargs": ({"use_reentrant": False} if self.gradient_checkpointing else None, None),
            "eval_strategy": ("steps" if evaluate else "no", "eval_steps"),
            "save_strategy": ("steps" if self.save_steps else "no", "save_steps"),
            "save_steps": (self.eval_steps if best_at_end else self.save_steps or 500, "save_steps"),
            "data_seed": (self.seed, "seed"),
            "ddp_find_unused_parameters": (False, None),
            "warmup_steps": (schedule.pop("warmup_steps"), "warmup_steps"),
            **{name: (value, fixed) for name, value in schedule.items()},
            "metric_for_best_model": ("eval_loss" if stop_early else None, "early_stopping_patience"),
            "greater_is_better": (False if stop_early else None, "early_stopping_patience"),
            "load_best_model_at_end": (best_at_end, "early_stopping_patience"),
        }

    def training_arguments(
        self, processes: int | None = None, args_class: type[TrainingArguments] = TrainingArguments, **extra: Any
    ) -> TrainingArguments:
        """The ``TrainingArguments`` this config stands for (``owned_arguments``, then the extra fields).

        ``args_class`` builds a subclass instead (e.g. TRL's ``DPOConfig``), with ``extra`` fields set.
        """
        processes = processes or launch_state().num_processes
        values = {name: value for name, (value, _) in self.owned_arguments(processes).items()}
        values.update(extra)
        values.update(self.extra_training_arguments)
        return course_training_arguments(args_class, **values)


#: TrainingArguments fields copied from the config field of another (or the same) name.
_COPIED_ARGUMENTS = {
    "output_dir": "output_dir", "max_steps": "max_steps", "per_device_train_batch_size": "per_device_batch_size",
    "per_device_eval_batch_size": "per_device_batch_size", "learning_rate": "learning_rate",
    "weight_decay": "weight_decay", "max_grad_norm": "max_grad_norm", "label_smoothing_factor": "label_smoothing",
    "logging_steps": "logging_steps", "eval_steps": "eval_steps", "save_total_limit": "save_total_limit",
    "seed": "seed", "report_to": "report_to",
}


#: ``trl.GRPOConfig`` fields set from the rl section (``dsnb.train.grpo.grpo_arguments``): TRL's name -> config field.
GRPO_ARGUMENTS = {
    "num_generations": "num_generations", "max_completion_length": "max_completion_length",
    "temperature": "temperature", "num_iterations": "num_iterations", "epsilon": "clip_epsilon", "beta": "kl_coef",
    "loss_type": "grpo_loss_type", "scale_rewards": "scale_rewards", "use_vllm": "use_vllm", "vllm_mode": "vllm_mode",
    "vllm_gpu_memory_utilization": "vllm_gpu_memory_utilization",
}


#: Config field -> its section (None: ``stage``, which stands above the sections).
FIELD_SECTIONS: dict[str, str | None] = {f.name: f.metadata["section"] for f in fields(FinetuneConfig)}


@functools.cache
def owned_training_arguments() -> dict[str, str]:
    """TrainingArguments fields the config sets -> the config field to set instead (``owned_arguments``).

    Setting one in ``extra_training_arguments`` would silently change a run behind the config's back
    (``output_dir`` there splits the run from its checkpoints), so ``check_fields`` refuses them.
    """
    table = FinetuneConfig(early_stopping_patience=1).owned_arguments(processes=1)
    owned = {name: source for name, (_, source) in table.items() if source is not None}
    return {**owned, "gradient_checkpointing": "gradient_checkpointing"}  # the older name of activation_checkpointing


def recipe_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """Field -> value from a recipe mapping: flat (``learning_rate: ...``), sectioned (``optimisation:
    {learning_rate: ...}``) or dotted (``optimisation.learning_rate: ...``, as ``--set`` gives it), mixed freely.

    ``model``, ``curriculum``, ``adversarial`` and ``augment`` are sections and fields both: a mapping
    under one is the section. Raises ``ConfigError`` naming unknown keys (with the valid ones), a field
    in the wrong section, or a field given twice.
    """
    out: dict[str, Any] = {}
    problems: list[str] = []
    unknown: dict[str | None, list[str]] = {}

    def put(section: str | None, name: Any, value: Any) -> None:
        if not isinstance(name, str) or name not in FIELD_SECTIONS:
            unknown.setdefault(section, []).append(str(name))
        elif section is not None and FIELD_SECTIONS[name] != section:
            home = FIELD_SECTIONS[name]
            problems.append(f"{section}.{name}: {name} belongs "
                            f"{f'in section {home}' if home else 'at the top level'}, not in section {section}")
        elif name in out:
            problems.append(f"{name} is given twice (flat and in section {FIELD_SECTIONS[name]}); keep one")
        else:
            out[name] = value

    for key, value in values.items():
        section, dot, name = str(key).partition(".")
        if dot and section in SECTIONS:
            put(section, name, value)
        elif key in SECTIONS and (isinstance(value, Mapping) or key not in FIELD_SECTIONS):
            if not isinstance(value, Mapping | None):
                problems.append(f"section {key} must be a mapping of its fields (e.g. {key}: {{{_fields_of(key)[0]}: "
                                f"...}}), not {value!r}")
                continue
            for name, inner in (value or {}).items():
                put(key, name, inner)
        else:
            put(None, key, value)
    problems += [_unknown(names, section) for section, names in unknown.items()]
    if problems:
        raise ConfigError("\n  ".join(["invalid recipe:", *problems]) if len(problems) > 1 else problems[0])
    return out


def _fields_of(section: str) -> list[str]:
    """The fields of ``section``, in declaration order."""
    return [name for name, home in FIELD_SECTIONS.items() if home == section]


def _unknown(names: list[str], section: str | None) -> str:
    """The message for unknown keys: the closest known names, then every valid key where they were written."""
    if section is None:
        valid = ["stage", *SECTIONS, *(n for n in FIELD_SECTIONS if n != "stage")]
        layout = "; ".join(f"{s}: {', '.join(_fields_of(s))}" for s in SECTIONS)
        where = f"valid keys are stage, the sections {', '.join(SECTIONS)} and their fields ({layout})"
        head = f"unknown config keys {names}"
    else:
        valid = _fields_of(section)
        where = f"section {section} holds {', '.join(valid)}"
        head = f"unknown keys {names} in section {section}"
    hints = []
    for name in names:
        head_, dot, tail = name.partition(".")  # a dotted key here has an unknown section
        close = difflib.get_close_matches(head_ if dot else name, SECTIONS if dot else valid, n=1)
        if close:
            home = FIELD_SECTIONS.get(close[0]) if section is None and not dot else None
            hints.append(f"{close[0]}{dot}{tail}" + (f" in section {home}" if home else "")
                         + (f" for {name}" if len(names) > 1 else ""))
    return head + (f" (did you mean {', '.join(hints)}?)" if hints else "") + f"; {where}"


def check_stage(cfg: FinetuneConfig) -> None:
    """Refuse a field set away from its default where ``cfg.stage`` does not read it (``STAGES``).

    A setting the stage never reads would be dropped without a word (``curriculum: linear`` for DPO);
    the message names the field, its section and the stage, and what to do.
    """
    stage = STAGES[cfg.stage]
    problems = []
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if stage.reads(f.name) or value == _default(f):
            continue
        section = f.metadata["section"]
        if f.name in stage.skips:
            why = f"{f.name}={value!r} (section {section}): stage {cfg.stage} ignores it ({stage.skips[f.name]})"
        else:
            why = (f"{f.name}={value!r}: stage {cfg.stage} does not read section {section} (it reads "
                   f"{', '.join(stage.sections)})")
        readers = " or ".join(name for name, other in STAGES.items() if other.reads(f.name))
        problems.append(f"{why}; remove it from the recipe, or train with stage: {readers}")
    if problems:
        raise ConfigError(f"settings that stage {cfg.stage} does not read:\n  " + "\n  ".join(problems))


def _default(f: Field) -> Any:
    """The default value of a config field."""
    return f.default_factory() if f.default_factory is not MISSING else f.default


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


def _as_names(values: Any, name: str) -> tuple[str, ...]:
    """A list of names as a tuple; a bare string is refused rather than split into letters."""
    if isinstance(values, str) or not isinstance(values, list | tuple):
        raise ConfigError(f"{name}={values!r}: expected a list of names, e.g. {name}: [{values if isinstance(values, str) else '...'}]")
    return tuple(values)


def _as_tasks(tasks: Any) -> tuple[str, ...]:
    """``tasks`` as a tuple; a bare string (``tasks: summary``) is refused rather than split into letters."""
    if isinstance(tasks, str) or not isinstance(tasks, list | tuple):
        raise ConfigError(f"tasks={tasks!r}: expected a list of task names, e.g. tasks: [summary] "
                          f"(choose from {TASKS})")
    return tuple(tasks)


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
        problem = _range_problem(value, f)
        if problem:
            allow_null = type(None) in typing.get_args(hints[f.name])
            problems.append(f"{f.name}: {value!r} must be {problem}" + (" (or null)" if allow_null else ""))
    extra = cfg.extra_training_arguments
    if isinstance(extra, dict) and extra:  # (the default config that owned_training_arguments builds has none)
        owned = owned_training_arguments()
        for key in sorted(set(extra) & set(owned)):
            problems.append(f"extra_training_arguments.{key}: set by the config field {owned[key]}; set it there instead")
        if cfg.stage == "grpo":  # TRL's GRPOConfig: its own fields may pass through, those the rl section sets not
            from trl import GRPOConfig

            owned = {**owned, **GRPO_ARGUMENTS}
            for key in sorted(set(extra) & set(GRPO_ARGUMENTS)):
                problems.append(f"extra_training_arguments.{key}: set by the config field {GRPO_ARGUMENTS[key]}; set it "
                                "there instead")
            valid, kind = {f.name for f in fields(GRPOConfig)}, "GRPOConfig"
        else:
            valid, kind = {f.name for f in fields(TrainingArguments)}, "TrainingArguments"
        for key in sorted(set(extra) - valid - set(owned)):
            problems.append(f"extra_training_arguments.{key}: not a {kind} field")
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))


def _range_problem(value: Any, f: Field) -> str | None:
    """The range ``value`` must be in, from the field's metadata (None if it is in range or unbounded)."""
    low, above, below = f.metadata["at_least"], f.metadata["above"], f.metadata["below"]
    if value is None or (low is None and above is None):
        return None
    if below is not None:
        return None if low <= value < below else f"in [{low}, {below})"
    if above is not None:
        return None if value > above else f"> {above}"
    return None if value >= low else f">= {low}"

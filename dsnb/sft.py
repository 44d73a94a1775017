"""Supervised fine-tuning (SFT), one way for every notebook, from a laptop CPU to many GPUs.

- ``FinetuneConfig``: a small dataclass of our own whose fields map one-to-one onto
  ``transformers.TrainingArguments`` (``FinetuneConfig.training_arguments``) plus the data and model
  choices (LoRA or full, layers to freeze, dropout, packing). Loaded from YAML by ``dsnb.train``.
- ``build_sft_dataset``: the corpus's instruction pairs as chat conversations through the
  tokenizer's chat template; labels are the assistant tokens only (prompt and padding are -100),
  taken from ``apply_chat_template(..., return_assistant_tokens_mask=True)``. Optional packing.
- ``prepare_model``: dropout override, LoRA (``dsnb.lora``: attention, dense MLP and shared experts;
  routed experts with ``lora_experts``) or full training,
  freezing the first N layers (claim C18); reports trainable parameters.
- ``plan_batch`` / ``effective_batch``: per-device batch × accumulation × processes (claims C14,
  C30); a global batch the process count does not divide is rejected.
- ``build_trainer`` / ``run_sft``: a ``transformers.Trainer`` with the warmup-then-floor schedule
  (``dsnb.schedules``, claim C10), bf16/fp16 where the hardware has it, gradient checkpointing,
  label smoothing, early stopping, verified checkpoints (``dsnb.checkpoint``) and ``LineProgress``.

Taught in notebook 03; notebook 08 measures its memory and speed switches.
"""

from __future__ import annotations

import ast
import hashlib
import logging
import os
import re
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    DataCollatorForSeq2Seq,
    EarlyStoppingCallback,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from dsnb.checkpoint import ManifestCallback
from dsnb.corpus import InstructionPair
from dsnb.lora import apply_lora, trainable_parameters
from dsnb.memory import saved_tensor_bytes
from dsnb.modeling import load_model, lora_target_parameters
from dsnb.progress import LineProgress
from dsnb.schedules import scaled_warmup_steps, schedule_arguments

logger = logging.getLogger(__name__)

TASKS = ("summary", "next_line", "dialogue")
DEFAULT_TASKS = ("summary", "next_line")
METHODS = ("full", "lora")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

SUMMARY_PROMPT = "Summarize this Python function in one line.\n"
NEXT_LINE_PROMPT = "Write the next line of this Python code.\n"


class BatchSizeError(ValueError):
    """The requested batch sizes cannot be met by this number of processes; the message says what to do."""


class ConfigError(ValueError):
    """A fine-tuning config is invalid; the message says which field and what to do."""


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------


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

    def __post_init__(self) -> None:
        self.tasks = tuple(self.tasks)
        for f in fields(self):  # YAML 1.1 reads "1e-5" (no dot) as a string
            value = getattr(self, f.name)
            if isinstance(value, str) and "float" in str(f.type):
                try:
                    setattr(self, f.name, float(value))
                except ValueError:
                    raise ConfigError(f"{f.name}={value!r}: expected a number") from None
        if self.method not in METHODS:
            raise ConfigError(f"method={self.method!r}: use one of {METHODS}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision={self.precision!r}: use one of {PRECISIONS}")
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
        """Load a recipe such as ``configs/sft/tiny.yaml``."""
        import yaml

        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; see configs/sft/ for examples")
        values = yaml.safe_load(path.read_text()) or {}
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

    def training_arguments(self, processes: int | None = None) -> TrainingArguments:
        """The ``TrainingArguments`` this config stands for (one field each, plus the schedule)."""
        processes = processes or world_size()
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
            disable_tqdm=True,
            use_cpu=not torch.cuda.is_available(),
            dataloader_num_workers=0,
            ddp_find_unused_parameters=False,
            **schedule_arguments(warmup, self.min_learning_rate),
        )
        if self.early_stopping_patience is not None:
            if not evaluate:
                raise ConfigError("early_stopping_patience needs eval_steps (it stops on the eval loss)")
            values.update(metric_for_best_model="eval_loss", greater_is_better=False)
            if self.save_steps:
                values.update(load_best_model_at_end=True, save_steps=self.eval_steps)
        values.update(self.extra_training_arguments)
        return TrainingArguments(**values)


def world_size() -> int:
    """Number of training processes (``WORLD_SIZE`` as set by torchrun / accelerate launch; 1 otherwise)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """True on the process that prints and saves (rank 0, or the only one)."""
    return int(os.environ.get("RANK", "0")) == 0


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


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def _stable_int(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def _body_lines(source: str) -> list[str]:
    """The non-blank lines of a function's body after its docstring (indentation kept)."""
    try:
        node = ast.parse(source).body[0]
    except (SyntaxError, IndexError):
        return []
    body = getattr(node, "body", [])
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]
    if not body:
        return []
    lines = source.splitlines()[body[0].lineno - 1:]
    return [ln for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def chat_messages(pair: InstructionPair, task: str, context_lines: int = 6) -> list[dict[str, str]] | None:
    """One conversation for ``task`` built from ``pair`` (None if the pair cannot make one).

    ``summary``: the signature in, its docstring's one-line summary out. ``next_line``: the signature
    and up to ``context_lines`` body lines in, the following body line out (the line chosen by a hash
    of the function's name, so the choice is deterministic).
    """
    if task == "summary":
        return [{"role": "user", "content": SUMMARY_PROMPT + pair.signature},
                {"role": "assistant", "content": pair.summary}]
    if task == "next_line":
        lines = _body_lines(pair.source)
        if len(lines) < 2:
            return None
        k = 1 + _stable_int(pair.qualname) % (len(lines) - 1)
        context = "\n".join([pair.signature, *lines[max(0, k - context_lines):k]])
        return [{"role": "user", "content": NEXT_LINE_PROMPT + context},
                {"role": "assistant", "content": lines[k]}]
    raise ConfigError(f"unknown task {task!r}; use one of {TASKS}")


def tokenize_chat(messages: list[dict[str, str]], tokenizer: PreTrainedTokenizerBase) -> dict[str, list[int]]:
    """Token ids, attention mask and completion-only labels of one conversation.

    The chat template's ``{% generation %}`` markers give the assistant mask; every other position
    (BOS, system, user turns, role tags) gets label -100 and so adds nothing to the loss.
    """
    enc = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids = list(enc["input_ids"])
    mask = list(enc["assistant_masks"])
    if not any(mask):
        raise ValueError(
            "the chat template marked no assistant tokens: it needs {% generation %} markers (dsnb's "
            "template has them) or the conversation has no assistant turn"
        )
    labels = [t if m else -100 for t, m in zip(ids, mask, strict=True)]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


def prompt_ids(messages: list[dict[str, str]], tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids of everything before the assistant's answer, ending with the generation prompt."""
    enc = tokenizer.apply_chat_template(messages[:-1], tokenize=True, add_generation_prompt=True, return_dict=True)
    return list(enc["input_ids"])


@dataclass
class SFTData:
    """Tokenized examples of one split and what building them removed (and why)."""

    split: str
    examples: list[dict[str, list[int]]]
    messages: list[list[dict[str, str]]]
    tasks: list[str]
    removed: dict[str, int]

    def __len__(self) -> int:
        return len(self.examples)

    def report(self) -> dict[str, Any]:
        """Counts per task, label tokens and removals, for a table."""
        label_tokens = sum(sum(t != -100 for t in e["labels"]) for e in self.examples)
        total = sum(len(e["input_ids"]) for e in self.examples)
        return {"split": self.split, "examples": len(self), "tokens": total, "label tokens": label_tokens,
                **{f"task {t}": self.tasks.count(t) for t in sorted(set(self.tasks))},
                **{f"removed: {k}": v for k, v in self.removed.items()}}


def build_sft_data(
    pairs: list[InstructionPair],
    tokenizer: PreTrainedTokenizerBase,
    tasks: tuple[str, ...] = DEFAULT_TASKS,
    max_seq_len: int = 128,
    limit: int | None = None,
    seed: int = 0,
    split: str = "train",
    dialogues: list[list[dict[str, str]]] | None = None,
) -> SFTData:
    """Tokenized completion-only examples for ``tasks`` (one example per pair and task).

    ``summary`` and ``next_line`` are made from ``pairs``; ``dialogue`` takes the conversations in
    ``dialogues`` as they are (notebook 02's cleaned chat split, see ``load_split``).
    Conversations longer than ``max_seq_len`` tokens are removed (not cut, which would drop the answer)
    and counted in ``removed``, as are pairs a task cannot use. Examples are shuffled with ``seed``;
    ``limit`` keeps the first ``limit`` of them.
    """
    removed = {"longer than max_seq_len": 0, "no body line to predict": 0}
    rows: list[tuple[str, list[dict[str, str]], dict[str, list[int]]]] = []
    for task in tasks:
        if task == "dialogue" and dialogues is None:
            raise ConfigError("task 'dialogue' needs conversations: pass dialogues=... (e.g. from "
                              "dsnb.quality.load_prepared('chat', split)) or use dsnb.sft.load_split")
        for item in (dialogues if task == "dialogue" else pairs):
            messages = [dict(m) for m in item] if task == "dialogue" else chat_messages(item, task)
            if messages is None:
                removed["no body line to predict"] += 1
                continue
            enc = tokenize_chat(messages, tokenizer)
            if len(enc["input_ids"]) > max_seq_len:
                removed["longer than max_seq_len"] += 1
                continue
            rows.append((task, messages, enc))
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)).tolist()
    rows = [rows[i] for i in order]
    if limit is not None and limit < len(rows):
        removed[f"beyond limit={limit}"] = len(rows) - limit
        rows = rows[:limit]
    logger.info("%s: %d SFT examples from %d pairs; removed %s", split, len(rows), len(pairs), removed)
    return SFTData(split, [r[2] for r in rows], [r[1] for r in rows], [r[0] for r in rows], removed)


def pack_examples(examples: list[dict[str, list[int]]], max_seq_len: int) -> list[dict[str, list[int]]]:
    """Greedily join whole examples into sequences of at most ``max_seq_len`` tokens (packing).

    Labels keep their -100 masks, so the loss still covers answers only. Attention is not reset at
    example boundaries (the usual cheap packing); fewer padding tokens make each step cheaper.
    """
    packed: list[dict[str, list[int]]] = []
    cur: dict[str, list[int]] = {"input_ids": [], "attention_mask": [], "labels": []}
    for ex in examples:
        if len(ex["input_ids"]) > max_seq_len:
            raise ValueError(f"an example of {len(ex['input_ids'])} tokens is longer than max_seq_len={max_seq_len}")
        if cur["input_ids"] and len(cur["input_ids"]) + len(ex["input_ids"]) > max_seq_len:
            packed.append(cur)
            cur = {"input_ids": [], "attention_mask": [], "labels": []}
        for key in cur:
            cur[key] = cur[key] + list(ex[key])
    if cur["input_ids"]:
        packed.append(cur)
    return packed


def to_dataset(examples: list[dict[str, list[int]]]):
    """A ``datasets.Dataset`` of the examples (what the Trainer reads)."""
    from datasets import Dataset

    return Dataset.from_list(examples)


def data_collator(tokenizer: PreTrainedTokenizerBase, pad_to_multiple_of: int | None = 16) -> DataCollatorForSeq2Seq:
    """Pads ``input_ids`` with the pad token, ``attention_mask`` with 0 and ``labels`` with -100.

    Padding to a multiple of 16 keeps the number of distinct batch shapes small; each new shape costs
    a slow first step on CPU (kernel selection) and on GPU (allocator, compiled kernels).
    """
    return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100, return_tensors="pt",
                                  pad_to_multiple_of=pad_to_multiple_of)


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------

_LAYER_RE = re.compile(r"\.layers\.(\d+)\.")


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Total and trainable parameter counts (``dsnb.lora.trainable_parameters`` as a dict)."""
    trainable, total = trainable_parameters(model)
    return {"total": total, "trainable": trainable}


def set_dropout(model: nn.Module, p: float) -> int:
    """Set every dropout probability in ``model`` (config and ``nn.Dropout`` modules) to ``p``.

    Returns how many ``nn.Dropout`` modules were changed. Used by notebook 11's overfitting controls.
    """
    if not 0.0 <= p < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {p}")
    config = getattr(model, "config", None)
    for key in ("attention_dropout", "hidden_dropout", "resid_pdrop", "embd_pdrop", "dropout"):
        if config is not None and hasattr(config, key):
            setattr(config, key, p)
    n = 0
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = p
            n += 1
        elif hasattr(module, "attention_dropout") and isinstance(module.attention_dropout, float):
            module.attention_dropout = p
    return n


def freeze_first_layers(model: nn.Module, n: int) -> list[str]:
    """Freeze the input embeddings and decoder layers ``0..n-1`` (claim C18); return the frozen names.

    The article keeps the base model's first 10 layers when loading official weights; freezing them
    keeps the low-level features and saves their gradients and optimizer states.
    """
    if n <= 0:
        return []
    layers = {int(m.group(1)) for name, _ in model.named_parameters() if (m := _LAYER_RE.search(f".{name}"))}
    if n > len(layers):
        raise ConfigError(f"freeze_first_layers={n} but the model has only {len(layers)} decoder layers")
    frozen = []
    for name, param in model.named_parameters():
        m = _LAYER_RE.search(f".{name}")
        if (m and int(m.group(1)) < n) or "embed_tokens" in name:
            param.requires_grad_(False)
            frozen.append(name)
    return frozen


def moe_block_classes(model: nn.Module) -> list[type]:
    """Classes of the MoE blocks in ``model`` (modules holding both ``experts`` and a router ``gate``)."""
    found: list[type] = []
    for module in model.modules():
        if hasattr(module, "experts") and hasattr(module, "gate") and type(module) not in found:
            found.append(type(module))
    return found


def zero3_active() -> bool:
    """True when this process runs under DeepSpeed ZeRO stage 3 (as set by ``accelerate launch``)."""
    return os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3"


def mark_moe_zero3_leaves(model: nn.Module) -> list[type]:
    """Make every MoE block a ZeRO-3 leaf module (DeepSpeed gathers it whole, so no rank hangs).

    Without this, a rank whose tokens route to no token of some expert never fetches that expert's
    shards and the others wait for it forever. Returns the classes marked.
    """
    classes = moe_block_classes(model)
    if classes:
        from deepspeed.utils import set_z3_leaf_modules

        set_z3_leaf_modules(model, classes)
    return classes


def prepare_model(model: PreTrainedModel, cfg: FinetuneConfig) -> tuple[nn.Module, dict[str, Any]]:
    """Apply the config's model choices (dropout, LoRA, freezing) and return the model and a summary."""
    if cfg.model_type and getattr(model.config, "model_type", None) != cfg.model_type:
        raise ConfigError(
            f"the recipe expects a {cfg.model_type!r} model but {cfg.model!r} is {model.config.model_type!r}; "
            "fix model or model_type in the config"
        )
    if cfg.dropout is not None:
        set_dropout(model, cfg.dropout)
    if zero3_active():
        logger.info("ZeRO-3: MoE blocks %s marked as leaf modules", mark_moe_zero3_leaves(model))
    if cfg.method == "lora":
        if cfg.lora_experts and not lora_target_parameters(model):
            raise ConfigError("lora_experts: true but the model has no fused routed-expert parameters (a dense "
                              "model?); remove lora_experts from the config")
        model = apply_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                           experts=cfg.lora_experts)
    frozen = freeze_first_layers(model, cfg.freeze_first_layers)
    counts = count_parameters(model)
    info = {"method": cfg.method, **counts, "trainable share": counts["trainable"] / counts["total"],
            "frozen tensors": len(frozen)}
    return model, info


# ---------------------------------------------------------------------------------------------
# Trainer
# ---------------------------------------------------------------------------------------------


def describe_batch(args: TrainingArguments) -> str:
    """The line printed at the start of every run: how the effective batch is made up."""
    n = args.world_size
    eff = effective_batch(args.per_device_train_batch_size, args.gradient_accumulation_steps, n)
    return (f"effective batch {eff} = {args.per_device_train_batch_size} per device x "
            f"{args.gradient_accumulation_steps} accumulation x {n} process{'es' if n > 1 else ''}")


def build_trainer(
    cfg: FinetuneConfig,
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    train_dataset: Any,
    eval_dataset: Any | None = None,
    callbacks: list[TrainerCallback] | None = None,
    progress: bool = True,
) -> Trainer:
    """A ``transformers.Trainer`` set up from ``cfg``: schedule, precision, checkpoints, progress lines."""
    args = cfg.training_arguments()
    cbs: list[TrainerCallback] = [ManifestCallback(compress=cfg.compress_checkpoints)]
    if progress and is_main_process():
        cbs.append(LineProgress("sft", lines=10))
    if cfg.early_stopping_patience is not None:
        cbs.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
    cbs += list(callbacks or [])
    trainer = Trainer(
        model=model, args=args, train_dataset=train_dataset,
        eval_dataset=eval_dataset if cfg.eval_steps is not None else None,
        data_collator=data_collator(tokenizer), processing_class=tokenizer, callbacks=cbs,
    )
    trainer.remove_callback(PrinterCallback)
    return trainer


@dataclass
class SFTResult:
    """What ``run_sft`` returns: the trained model and everything measured about the run."""

    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    trainer: Trainer
    train: SFTData
    eval: SFTData | None
    info: dict[str, Any]
    log_history: list[dict[str, Any]]
    seconds: float

    @property
    def train_losses(self) -> tuple[list[int], list[float]]:
        """(steps, training loss) as logged."""
        rows = [(r["step"], r["loss"]) for r in self.log_history if "loss" in r]
        return [s for s, _ in rows], [v for _, v in rows]

    @property
    def eval_losses(self) -> tuple[list[int], list[float]]:
        """(steps, eval loss) as logged."""
        rows = [(r["step"], r["eval_loss"]) for r in self.log_history if "eval_loss" in r]
        return [s for s, _ in rows], [v for _, v in rows]


def restore_full_weights(model: nn.Module, checkpoint: str | Path) -> bool:
    """Load a checkpoint's weights into ``model`` through ``from_pretrained`` (weight conversions applied).

    Needed for MoE models in transformers 5: a checkpoint stores routed experts per expert
    (``experts.0.gate_proj.weight`` ...) while the model holds them fused (``experts.gate_up_proj``), and
    the Trainer's own resume loads the file with ``strict=False``, so the experts would silently keep
    their pre-resume values. Returns True if weights were loaded (full models; adapters load as usual).
    """
    from transformers import AutoModelForCausalLM

    checkpoint = Path(checkpoint)
    if hasattr(model, "peft_config") or not (checkpoint / "config.json").is_file():
        return False
    loaded = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=next(model.parameters()).dtype)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if missing or unexpected:
        raise RuntimeError(f"checkpoint {checkpoint} does not fit the model: missing {missing}, unexpected {unexpected}")
    return True


def load_split(cfg: FinetuneConfig, tokenizer: PreTrainedTokenizerBase, split: str, limit: int | None = None,
               corpus=None) -> SFTData:
    """The SFT examples of one corpus split (train, validation or test) for ``cfg.tasks``.

    ``dialogue`` reads the cleaned chat records notebook 02 prepared (``dsnb.quality.load_prepared``,
    built and cached on first use); the other tasks come from the corpus's instruction pairs.
    """
    from dsnb.corpus import course_corpus

    corpus = corpus or course_corpus()
    dialogues = None
    if "dialogue" in cfg.tasks:
        from dsnb.quality import load_prepared, prepare_data

        dialogues = load_prepared("chat", split, prepare_data(corpus))["messages"]
    return build_sft_data(corpus.pairs_in(split), tokenizer, cfg.tasks, cfg.max_seq_len, limit, cfg.seed, split,
                          dialogues)


def load_sft_data(cfg: FinetuneConfig, tokenizer: PreTrainedTokenizerBase, corpus=None) -> tuple[SFTData, SFTData]:
    """Training (train split) and evaluation (validation split) data for ``cfg``."""
    return (load_split(cfg, tokenizer, "train", cfg.train_examples, corpus),
            load_split(cfg, tokenizer, "validation", cfg.eval_examples, corpus))


def run_sft(
    cfg: FinetuneConfig,
    model: PreTrainedModel | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    corpus=None,
    resume_from: str | Path | None = None,
    callbacks: list[TrainerCallback] | None = None,
    progress: bool = True,
) -> SFTResult:
    """Fine-tune ``cfg.model`` (or the given model) on the corpus tasks; return model, logs and timings.

    ``resume_from`` is a checkpoint directory (verified first, see ``dsnb.checkpoint.prepare_resume``)
    or ``"auto"`` for the newest complete checkpoint in ``cfg.output_dir``.
    """
    from dsnb.checkpoint import find_resumable, prepare_resume

    torch.manual_seed(cfg.seed)
    if model is None:
        model, loaded_tok = load_model(cfg.model, dtype=torch.float32)
        tokenizer = tokenizer or loaded_tok
    if tokenizer is None:
        raise ConfigError("pass the tokenizer together with the model")
    model, info = prepare_model(model, cfg)
    train, evald = load_sft_data(cfg, tokenizer, corpus)
    train_examples = pack_examples(train.examples, cfg.max_seq_len) if cfg.packing else train.examples
    info.update(train_examples=len(train), train_sequences=len(train_examples))
    trainer = build_trainer(cfg, model, tokenizer, to_dataset(train_examples), to_dataset(evald.examples),
                            callbacks, progress)
    args = trainer.args
    info.update(processes=args.world_size, accumulation=args.gradient_accumulation_steps,
                effective_batch=effective_batch(args.per_device_train_batch_size, args.gradient_accumulation_steps,
                                                args.world_size),
                precision=resolve_precision(cfg.precision))
    if is_main_process():
        print(f"sft: {describe_batch(args)}; {info['trainable']:,} of {info['total']:,} parameters trainable "
              f"({cfg.method}); precision {info['precision']}", flush=True)
    checkpoint = None
    if resume_from is not None:
        found = find_resumable(cfg.output_dir) if str(resume_from) == "auto" else Path(resume_from)
        checkpoint = str(prepare_resume(found)) if found is not None else None
        if checkpoint is None:
            logger.info("no complete checkpoint in %s; starting from scratch", cfg.output_dir)
    if checkpoint is not None:
        restore_full_weights(model, checkpoint)
    t0 = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=checkpoint)
    seconds = time.perf_counter() - t0
    info.update(train_loss=output.training_loss, steps=trainer.state.global_step, resumed_from=checkpoint)
    model.eval()
    return SFTResult(model, tokenizer, trainer, train, evald, info, list(trainer.state.log_history), seconds)


def label_view(example: dict[str, list[int]], tokenizer: PreTrainedTokenizerBase) -> list[dict[str, Any]]:
    """One row per token of ``example``: the token text and whether it is trained on (label != -100)."""
    return [{"position": i, "token": tokenizer.decode([t]), "in loss": lab != -100}
            for i, (t, lab) in enumerate(zip(example["input_ids"], example["labels"], strict=True))]


def training_state_bytes(model: nn.Module, bytes_per_param: int = 4) -> dict[str, int]:
    """Bytes of weights, gradients and AdamW's states (two fp32 moments and a ``step`` per tensor).

    Counted from the parameters, activations not included; equal to the real tensors after an
    AdamW step (tested against ``dsnb.memory.measure_model_state_bytes``).
    """
    counts = count_parameters(model)
    weights = counts["total"] * bytes_per_param
    grads = counts["trainable"] * bytes_per_param
    tensors = sum(1 for p in model.parameters() if p.requires_grad)
    adam = counts["trainable"] * 2 * 4 + 4 * tensors
    return {"weights": weights, "gradients": grads, "optimizer": adam, "total": weights + grads + adam}


# ---------------------------------------------------------------------------------------------
# Memory and speed switches, measured (notebook 08)
# ---------------------------------------------------------------------------------------------


def measure_training_step(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    precision: str = "fp32",
    gradient_checkpointing: bool = False,
    accumulation: int = 1,
    repeats: int = 3,
) -> dict[str, float]:
    """Measure one optimizer step's worth of forward+backward on ``batch`` (split into ``accumulation`` parts).

    Returns the bytes autograd keeps for the backward pass (the activation memory gradient checkpointing
    and mixed precision cut; counted exactly with ``saved_tensors_hooks``, the same on any device), the
    peak CUDA memory on a GPU, and the seconds per step (the fastest repeat after a warm-up one: on a
    shared machine the fastest is the one least disturbed by other work). Taught in notebook 08.
    """
    precision = resolve_precision(precision)
    device = next(model.parameters()).device
    model.train()
    if gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.activation_checkpointing_disable()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    parts = [{k: v[i::accumulation].to(device) for k, v in batch.items()} for i in range(accumulation)]
    times, peaks, most = [], [], 0
    for _ in range(repeats + 1):
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        for part in parts:
            with saved_tensor_bytes(model) as saved, \
                    torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = model(**part).loss / accumulation
            loss.backward()
            most = max(most, saved["bytes"])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            peaks.append(torch.cuda.max_memory_allocated(device))
        times.append(time.perf_counter() - t0)
    model.activation_checkpointing_disable()
    model.zero_grad(set_to_none=True)
    tokens = int(batch["attention_mask"].sum())
    sec = min(times[1:])  # the first repeat warms up kernels
    return {"activation MB": most / 2**20, "peak CUDA MB": (max(peaks) / 2**20) if peaks else float("nan"),
            "seconds/step": sec, "tokens/s": tokens / sec}


def share_query_key(model: nn.Module) -> int:
    """Tie each attention layer's key projection to its query projection (claim C16); return parameters saved.

    Possible only where both are plain ``q_proj``/``k_proj`` Linears of the same shape (Llama/Qwen2 with as
    many key/value heads as query heads). DeepSeek's MLA has no ``k_proj`` to share: it already derives
    keys and values from one shared low-rank latent (``kv_a_proj_with_mqa`` -> ``kv_b_proj``), a stronger
    saving of the same kind. Raises ``ValueError`` where the architecture does not allow it.
    """
    saved = 0
    for name, module in model.named_modules():
        q, k = getattr(module, "q_proj", None), getattr(module, "k_proj", None)
        if q is None and hasattr(module, "kv_a_proj_with_mqa"):
            raise ValueError("MLA attention (DeepSeek-V2/V3) has no separate k_proj: keys come from the shared "
                             "low-rank KV latent, so there is nothing to tie")
        if not (isinstance(q, nn.Linear) and isinstance(k, nn.Linear)):
            continue
        if q.weight.shape != k.weight.shape:
            raise ValueError(f"{name}: q_proj {tuple(q.weight.shape)} and k_proj {tuple(k.weight.shape)} differ "
                             "(grouped-query attention); Q/K sharing needs as many KV heads as query heads")
        saved += k.weight.numel() + (k.bias.numel() if k.bias is not None else 0)
        k.weight = q.weight
        if k.bias is not None and q.bias is not None:
            k.bias = q.bias
    if saved == 0:
        raise ValueError(f"{type(model).__name__} has no q_proj/k_proj pairs to share")
    return saved

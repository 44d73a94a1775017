"""Teacher → student distillation on the Trainer, and the cheap top-k alternative used at scale.

``DistillationTrainer`` is a ``transformers.Trainer`` whose loss is ``dsnb.train.losses.CombinedLoss``
between the student's logits and a frozen teacher's (teacher in eval mode, under ``torch.no_grad``,
optionally in bf16); ``run_distillation`` runs it as ``DistillationStage`` (SFT's data, schedule and
checkpoints) on the run path every stage shares (``dsnb.train.run.run_stage``, resume included). ``shrink_model`` makes a smaller DeepSeek student (fewer layers, fewer routed
experts) initialised from the teacher's base wherever shapes allow. ``topk_teacher`` / ``topk_kl``
keep only the teacher's k largest logits per token, what one stores when teacher logits are
precomputed for a large corpus. Taught in notebook 04.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainerCallback, TrainingArguments

from dsnb.train.config import ConfigError, FinetuneConfig
from dsnb.train.losses import CombinedLoss
from dsnb.train.run import run_stage
from dsnb.train.sft import SFTResult, SFTStage, build_trainer

logger = logging.getLogger(__name__)


def check_same_tokenizer(teacher: PreTrainedTokenizerBase, student: PreTrainedTokenizerBase) -> None:
    """Raise ``ValueError`` unless both tokenizers map the same strings to the same ids.

    Token-level distillation compares the two models' probabilities for the *same* vocabulary entry;
    with different tokenizers position ``i`` of the two logit vectors means different tokens.
    """
    tv, sv = teacher.get_vocab(), student.get_vocab()
    if tv != sv:
        only_t, only_s = len(set(tv) - set(sv)), len(set(sv) - set(tv))
        moved = sum(1 for t, i in tv.items() if t in sv and sv[t] != i)
        raise ValueError(f"teacher and student tokenizers differ ({len(tv)} vs {len(sv)} tokens; {only_t} only in "
                         f"the teacher's, {only_s} only in the student's, {moved} with other ids). Token-level "
                         "distillation needs one tokenizer: pick a student from the teacher's family, or distil "
                         "on generated text (sequence-level) instead")
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(teacher, name) != getattr(student, name):
            raise ValueError(f"teacher and student tokenizers differ in {name}: "
                             f"{getattr(teacher, name)} vs {getattr(student, name)}")


def shrink_model(model: PreTrainedModel, num_hidden_layers: int | None = None,
                 n_routed_experts: int | None = None, **config_changes: Any) -> tuple[PreTrainedModel, dict[str, int]]:
    """A smaller model of the same architecture, initialised from ``model`` where shapes allow.

    Keeps the first ``num_hidden_layers`` decoder layers and the first ``n_routed_experts`` routed
    experts of every MoE layer (fused expert tensors, router rows and the balancing bias are sliced
    along the expert axis). Tensors whose shape cannot be sliced this way keep their random
    initialisation. Returns the student and counts of copied, sliced and random tensors.
    """
    config = copy.deepcopy(model.config)
    if num_hidden_layers is not None:
        if not 1 <= num_hidden_layers <= config.num_hidden_layers:
            raise ValueError(f"num_hidden_layers={num_hidden_layers}: choose 1..{config.num_hidden_layers}")
        config.num_hidden_layers = num_hidden_layers
    if n_routed_experts is not None:
        top_k = getattr(config, "num_experts_per_tok", 1) or 1
        if not top_k <= n_routed_experts <= getattr(config, "n_routed_experts", 0):
            raise ValueError(f"n_routed_experts={n_routed_experts}: choose {top_k}.."
                             f"{getattr(config, 'n_routed_experts', 0)} (at least num_experts_per_tok)")
        config.n_routed_experts = n_routed_experts
    for key, value in config_changes.items():
        setattr(config, key, value)
    student = type(model)(config).to(next(model.parameters()).dtype)
    source = model.state_dict()
    counts = {"copied": 0, "sliced": 0, "random": 0}
    state = student.state_dict()
    with torch.no_grad():
        for name, tensor in state.items():
            src = source.get(name)
            if src is not None and src.shape == tensor.shape:
                tensor.copy_(src)
                counts["copied"] += 1
            elif src is not None and src.dim() == tensor.dim() and src.shape[1:] == tensor.shape[1:] \
                    and src.shape[0] > tensor.shape[0]:
                tensor.copy_(src[: tensor.shape[0]])
                counts["sliced"] += 1
            else:
                counts["random"] += 1
    student.load_state_dict(state)
    return student, counts


class DistillationTrainer(Trainer):
    """A ``Trainer`` that trains the model with ``loss_fn(student_logits, labels, teacher_logits)``.

    The teacher is frozen (``requires_grad=False``), kept in eval mode (no dropout) and run under
    ``torch.no_grad``, optionally cast to ``teacher_dtype`` (bf16 halves its memory). The loss is
    normalised by the token count of the whole accumulated batch when the Trainer passes it, so
    gradient accumulation gives the same gradients as one large batch. When ``loss_fn.kl_weight``
    is 0 the teacher is skipped (plain CE, no teacher cost). The logs gain ``ce`` and ``kl`` (means
    since the last log) and ``teacher_seconds`` / ``teacher_tokens`` accumulate the teacher's cost.
    """

    loss_is_scaled_for_ga = True

    def __init__(self, *args: Any, teacher: nn.Module, loss_fn: CombinedLoss | None = None,
                 teacher_dtype: torch.dtype | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.teacher = teacher.to(self.args.device, dtype=teacher_dtype) if teacher_dtype else teacher.to(self.args.device)
        self.teacher.eval()
        self.teacher.requires_grad_(False)
        self.loss_fn = loss_fn or CombinedLoss()
        self.teacher_seconds, self.teacher_tokens = 0.0, 0
        self._parts: list[float] = [0.0, 0.0, 0]

    def compute_loss(self, model: nn.Module, inputs: dict[str, torch.Tensor], return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | int | None = None):
        labels = inputs["labels"]
        model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
        outputs = model(**model_inputs)
        if self.loss_fn.kl_weight == 0:
            teacher_logits = outputs.logits.detach()
        else:
            self.teacher.eval()
            t0 = time.perf_counter()
            with torch.no_grad():
                teacher_logits = self.teacher(**model_inputs).logits
            self.teacher_seconds += time.perf_counter() - t0
            self.teacher_tokens += int(model_inputs["input_ids"].numel())
        loss = self.loss_fn(outputs.logits, labels, teacher_logits, num_items=num_items_in_batch)
        if model.training:
            if num_items_in_batch is None:  # a per-batch mean: scale it for accumulation ourselves
                loss = loss / self.current_gradient_accumulation_steps
            elif self.args.average_tokens_across_devices:  # the count is global; DDP averages gradients
                loss = loss * self.accelerator.num_processes
            self._parts[0] += float(self.loss_fn.last_ce)
            self._parts[1] += float(self.loss_fn.last_kl)
            self._parts[2] += 1
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if "loss" in logs and self._parts[2]:
            logs["ce"], logs["kl"] = self._parts[0] / self._parts[2], self._parts[1] / self._parts[2]
            self._parts = [0.0, 0.0, 0]
        super().log(logs, *args, **kwargs)


@dataclass
class DistillationStage(SFTStage):
    """SFT's data and schedule, trained by ``DistillationTrainer`` (give it ``trainer_kwargs`` with the teacher)."""

    name: str = "distill"
    trainer_class: type[Trainer] = DistillationTrainer

    def extra_info(self, cfg: FinetuneConfig, trainer: Trainer) -> dict[str, Any]:
        loss = trainer.loss_fn
        return {"teacher parameters": trainer.teacher.num_parameters(), "ce_weight": loss.ce_weight,
                "kl_weight": loss.kl_weight, "temperature": loss.temperature}

    def describe(self, cfg: FinetuneConfig, args: TrainingArguments, info: dict[str, Any]) -> str:
        return (f"{super().describe(cfg, args, info)}; teacher {info['teacher parameters']:,} parameters; "
                f"loss {info['ce_weight']:g} CE + {info['kl_weight']:g} KL at T={info['temperature']:g}")


def run_distillation(
    cfg: FinetuneConfig,
    student: PreTrainedModel,
    teacher: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    loss_fn: CombinedLoss | None = None,
    corpus=None,
    teacher_tokenizer: PreTrainedTokenizerBase | None = None,
    teacher_dtype: torch.dtype | None = None,
    progress: bool = True,
    resume_from: str | Path | None = None,
    callbacks: list[TrainerCallback] | None = None,
) -> SFTResult:
    """Train ``student`` on ``cfg``'s SFT data with ``loss_fn`` against ``teacher`` (``DistillationStage``).

    ``tokenizer`` is the student's; pass ``teacher_tokenizer`` when the teacher has its own, and it
    is checked to be the same (``check_same_tokenizer``). The models' vocabulary sizes must match.
    ``result.trainer.teacher_seconds`` is the time spent in teacher forwards. ``resume_from``: a
    checkpoint of this run or ``"auto"``, as for ``run_sft``.
    """
    if teacher_tokenizer is not None:
        check_same_tokenizer(teacher_tokenizer, tokenizer)
    tv, sv = teacher.config.vocab_size, student.config.vocab_size
    if tv != sv:
        raise ValueError(f"teacher vocabulary {tv} != student vocabulary {sv}: distillation needs one tokenizer")
    if cfg.label_smoothing:
        raise ConfigError("label_smoothing is not applied by the distillation loss; set it to 0 (the teacher's "
                          "soft targets already smooth the labels)")
    stage = DistillationStage(trainer_kwargs=dict(teacher=teacher, loss_fn=loss_fn, teacher_dtype=teacher_dtype))
    return run_stage(stage, cfg, student, tokenizer, corpus, resume_from, callbacks, progress)


def topk_teacher(teacher_logits: torch.Tensor, k: int, value_dtype: torch.dtype = torch.bfloat16
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's ``k`` largest logits per position and their token ids (int32), as stored offline."""
    if not 1 <= k <= teacher_logits.shape[-1]:
        raise ValueError(f"k={k} must be between 1 and the vocabulary size {teacher_logits.shape[-1]}")
    values, indices = teacher_logits.detach().topk(k, dim=-1)
    return values.to(value_dtype), indices.to(torch.int32)


def topk_bytes_per_token(k: int, value_bytes: int = 2, index_bytes: int = 4) -> int:
    """Storage of one position's top-k teacher logits: ``k`` values (bf16) and ``k`` token ids (int32)."""
    return k * (value_bytes + index_bytes)


def topk_kl(student_logits: torch.Tensor, labels: torch.Tensor, values: torch.Tensor, indices: torch.Tensor,
            temperature: float = 1.0, ignore_index: int = -100) -> torch.Tensor:
    """Forward KL from the teacher's top-k distribution (renormalised over the kept ids) to the student.

    Same shift and masking as ``CombinedLoss`` (position ``t`` predicts ``labels[t + 1]``), averaged
    over real tokens, *without* the T² factor (compare it with ``CombinedLoss.last_kl``). The student's
    log-probabilities are over the full vocabulary, gathered at the kept ids.
    """
    if values.shape != indices.shape or values.shape[:2] != student_logits.shape[:2]:
        raise ValueError(f"values {tuple(values.shape)}, indices {tuple(indices.shape)} and student logits "
                         f"{tuple(student_logits.shape)} must share (batch, seq)")
    shifted = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=ignore_index)
    valid = shifted != ignore_index
    log_q = (student_logits.float() / temperature).log_softmax(-1).gather(-1, indices.long())
    log_p = (values.float() / temperature).log_softmax(-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1) * valid
    return kl.sum() / valid.sum().clamp(min=1)


def topk_mass(teacher_logits: torch.Tensor, k: int, temperature: float = 1.0) -> float:
    """Mean share of the teacher's probability (at ``temperature``) that its top ``k`` tokens hold."""
    p = (teacher_logits.float() / temperature).softmax(-1)
    return p.topk(k, dim=-1).values.sum(-1).mean().item()


def distil_students(
    cfg: FinetuneConfig,
    teacher: PreTrainedModel,
    base: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    test_data: Any,
    settings: list[tuple[float, float]],
    seeds: list[int],
    num_hidden_layers: int = 2,
    n_routed_experts: int = 4,
    train_data: Any = None,
    corpus=None,
) -> list[dict[str, Any]]:
    """Train one student per ``(kl_weight, temperature)`` setting and seed; held-out metrics per run.

    Each student is ``shrink_model(base, ...)`` trained by ``DistillationTrainer`` (through
    ``dsnb.train.sft.build_trainer``) on ``train_data`` (default: ``cfg``'s training split, built once
    for all runs) with ``CombinedLoss(1 - kl_weight, kl_weight, T)``; ``kl_weight = 0`` is the CE-only
    baseline. ``cfg.seed`` is replaced by each seed (data order). Rows: setting, seed, answer loss and
    token accuracy on ``test_data``, training seconds and the teacher's share of them.
    """
    from dsnb.train.chat import load_split, to_dataset
    from dsnb.train.evaluation import completion_loss
    from dsnb.train.trainable import prepare_model

    if teacher.config.vocab_size != base.config.vocab_size:
        raise ValueError("teacher and student vocabularies differ: distillation needs one tokenizer")
    train_data = train_data or load_split(cfg, tokenizer, "train", cfg.train_examples, corpus)
    dataset = to_dataset(train_data.examples)
    rows = []
    for seed in seeds:
        for kl_weight, temperature in settings:
            run_cfg = cfg.replace(seed=seed)
            torch.manual_seed(seed)
            student, _ = prepare_model(shrink_model(base, num_hidden_layers, n_routed_experts)[0], run_cfg)
            loss_fn = CombinedLoss(1.0 - kl_weight, kl_weight, temperature)
            trainer = build_trainer(run_cfg, student, tokenizer, dataset, progress=False,
                                    trainer_class=DistillationTrainer,
                                    trainer_kwargs=dict(teacher=teacher, loss_fn=loss_fn))
            t0 = time.perf_counter()
            trainer.train()
            seconds = time.perf_counter() - t0
            metrics = completion_loss(student, tokenizer, test_data)
            rows.append({"kl_weight": kl_weight, "temperature": temperature, "seed": seed,
                         "loss": metrics["loss"], "token accuracy": metrics["token accuracy"],
                         "seconds": seconds, "teacher_seconds": trainer.teacher_seconds,
                         "steps": trainer.state.global_step})
            logger.info("student kl_weight=%s T=%s seed=%s: loss %.3f", kl_weight, temperature, seed, metrics["loss"])
    return rows

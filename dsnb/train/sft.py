"""Supervised fine-tuning (SFT) on ``transformers.Trainer``, from a laptop CPU to many GPUs.

``build_trainer`` / ``run_sft``: a ``transformers.Trainer`` with the warmup-then-floor schedule
(``dsnb.train.schedules``, claim C10), bf16/fp16 where the hardware has it, gradient checkpointing,
label smoothing, early stopping, verified checkpoints (``dsnb.train.checkpoint``) and
``LineProgress``. ``run_sft`` loads the model and data, trains, evaluates and resumes through the
run path every stage shares (``dsnb.train.run.run_stage``); ``SFTStage`` is what SFT brings to it.

Why ``transformers.Trainer`` and not TRL's ``SFTTrainer`` / ``SFTConfig`` (TRL is a dependency; the
DPO and distillation stages use it): ``SFTTrainer`` is a ``Trainer`` subclass, so it would keep the
accumulation equality, resume and recipes, but it would replace little of ours. Its assistant-only
loss is the same ``return_assistant_tokens_mask`` labelling ``dsnb.train.chat.tokenize_chat`` does
(about 20 lines); its padding-free packing is the ``DataCollatorWithFlattening`` that
``dsnb.train.chat.data_collator(packing=True)`` already uses. In exchange it would tokenize the data
itself, truncating examples longer than ``max_length`` where ``dsnb.train.chat`` drops and counts
them (a cut-off answer teaches the model to stop mid-line); and its ``compute_loss`` computes the
entropy and token accuracy of every training step, an extra pass over the logits that the CPU runs
of this course would pay at every step. ``FinetuneConfig`` would still be needed to map the recipes
onto ``SFTConfig``. Token accuracy is reported at evaluation instead (``dsnb.train.evaluation``).

Taught in notebook 03.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from torch import nn
from transformers import (
    EarlyStoppingCallback,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from dsnb.model.routing import ExpertBiasBalancer, routers
from dsnb.progress import LineProgress
from dsnb.train.adversarial import AdversarialMixin, settings_from_config
from dsnb.train.chat import SFTData, data_collator, load_sft_data, to_dataset
from dsnb.train.checkpoint import ManifestCallback
from dsnb.train.config import ConfigError, FinetuneConfig, effective_batch
from dsnb.train.curriculum import CurriculumMixin, schedule_from_config
from dsnb.train.run import RunResult, Stage, StageData, run_stage

logger = logging.getLogger(__name__)


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
    args: TrainingArguments | None = None,
    trainer_class: type[Trainer] = Trainer,
    trainer_kwargs: dict[str, Any] | None = None,
) -> Trainer:
    """A ``transformers.Trainer`` set up from ``cfg``: schedule, precision, checkpoints, progress lines.

    ``args`` defaults to ``cfg.training_arguments()``. ``trainer_class`` / ``trainer_kwargs``: a ``Trainer``
    subclass and its extra arguments (notebook 04's ``dsnb.train.distill.DistillationTrainer`` and its teacher).
    """
    args = args or cfg.training_arguments()
    cbs: list[TrainerCallback] = [ManifestCallback(compress=cfg.compress_checkpoints)]
    if progress and args.process_index == 0:
        cbs.append(LineProgress("sft", lines=10))
    if cfg.early_stopping_patience is not None:
        cbs.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
    if cfg.bias_update_rate > 0 and routers(model):
        if cfg.method == "full":
            cbs.append(ExpertBiasBalancer(model, cfg.bias_update_rate))
        else:
            logger.warning("bias_update_rate=%s ignored with method=%r: the router bias belongs to the frozen base "
                           "model and a saved adapter would not carry it", cfg.bias_update_rate, cfg.method)
    cbs += list(callbacks or [])
    curriculum, adversarial = schedule_from_config(cfg), settings_from_config(cfg)
    if curriculum or adversarial:  # notebook 05: curriculum sampling and adversarial steps as Trainer mixins
        trainer_class = type(trainer_class.__name__, (CurriculumMixin, AdversarialMixin, trainer_class), {})
        trainer_kwargs = {**(trainer_kwargs or {}), "curriculum": curriculum, "adversarial": adversarial}
    trainer = trainer_class(
        model=model, args=args, train_dataset=train_dataset,
        eval_dataset=eval_dataset if cfg.eval_steps is not None else None,
        data_collator=data_collator(tokenizer, packing=cfg.packing), processing_class=tokenizer, callbacks=cbs, **(trainer_kwargs or {}),
    )
    trainer.remove_callback(PrinterCallback)
    return trainer


@dataclass
class SFTResult(RunResult):
    """What ``run_sft`` returns: the trained model, the ``SFTData`` it trained and evaluated on, everything measured."""

    train: SFTData
    eval: SFTData


@dataclass
class SFTStage(Stage):
    """Supervised fine-tuning: the corpus tasks as chat examples, trained by ``build_trainer``'s ``Trainer``.

    ``trainer_class`` / ``trainer_kwargs``: a ``Trainer`` subclass and its extra arguments.
    """

    name: str = "sft"
    trainer_class: type[Trainer] = Trainer
    trainer_kwargs: dict[str, Any] | None = None
    result_class: ClassVar[type[RunResult]] = SFTResult

    def data(self, cfg: FinetuneConfig, model: nn.Module, tokenizer: PreTrainedTokenizerBase, corpus: Any
             ) -> StageData:
        train, evald = load_sft_data(cfg, tokenizer, corpus)
        if not train.examples:
            raise ConfigError(f"no training examples for tasks {list(cfg.tasks)} (train_examples={cfg.train_examples}); "
                              "check the data and the tasks")
        return StageData(to_dataset(train.examples), to_dataset(evald.examples), train, evald,
                         {"train_examples": len(train)})

    def trainer(self, cfg: FinetuneConfig, model: nn.Module, tokenizer: PreTrainedTokenizerBase, data: StageData,
                args: TrainingArguments, callbacks: list[TrainerCallback] | None, progress: bool) -> Trainer:
        return build_trainer(cfg, model, tokenizer, data.train_dataset, data.eval_dataset, callbacks, progress,
                             args=args, trainer_class=self.trainer_class, trainer_kwargs=self.trainer_kwargs)

    def describe(self, cfg: FinetuneConfig, args: TrainingArguments, info: dict[str, Any]) -> str:
        return (f"{self.name}: {describe_batch(args)}; {info['trainable']:,} of {info['total']:,} parameters "
                f"trainable ({cfg.method}); precision {info['precision']}")


def run_sft(
    cfg: FinetuneConfig,
    model: PreTrainedModel | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    corpus=None,
    resume_from: str | Path | None = None,
    callbacks: list[TrainerCallback] | None = None,
    progress: bool = True,
    trainer_class: type[Trainer] = Trainer,
    trainer_kwargs: dict[str, Any] | None = None,
) -> SFTResult:
    """Fine-tune ``cfg.model`` (or the given model) on the corpus tasks; return model, logs and timings.

    The run path is ``dsnb.train.run.run_stage``: ``resume_from`` is a checkpoint directory (verified
    first) or ``"auto"`` for the newest complete checkpoint in ``cfg.output_dir``. ``trainer_class`` /
    ``trainer_kwargs`` go to ``build_trainer``.
    """
    stage = SFTStage(trainer_class=trainer_class, trainer_kwargs=trainer_kwargs)
    return run_stage(stage, cfg, model, tokenizer, corpus, resume_from, callbacks, progress)

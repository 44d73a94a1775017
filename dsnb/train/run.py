"""One run path for every training stage: load, prepare, build the trainer, resume, train, finish.

``run_stage(stage, cfg)`` is what ``run_sft`` (``dsnb.train.sft``), ``run_dpo`` (``dsnb.train.dpo``),
``run_grpo`` (``dsnb.train.grpo``) and ``run_distillation`` (``dsnb.train.distill``) call. A ``Stage`` brings only what differs between
them: its ``TrainingArguments`` class, how it prepares the model, its data, its trainer factory and its
info lines. Everything else happens here, once, in this order:

1. the config checks that need no model (``check_before_loading``), the seed, the arguments (built
   before loading: under DeepSpeed ZeRO-3 they switch on the hooks that loading relies on);
2. the model (``cfg.model`` through ``dsnb.model.load.load_model`` unless one is given), prepared;
3. the stage's data and trainer; one line saying what will be trained;
4. a verified resume (``dsnb.train.checkpoint.prepare_resume_on_main``) that also loads the full
   weights (``restore_full_weights``: without it the fused routed experts of an MoE model keep their
   pre-resume values, because the Trainer loads the checkpoint with ``strict=False``);
5. training, the best checkpoint reloaded if the arguments ask for it (``load_best_weights``), the
   restored copies of compressed checkpoints removed, and a ``RunResult``.

``STAGE_RUNNERS`` maps a recipe's ``stage:`` to the function ``python -m dsnb.train`` runs.
Taught in notebooks 03, 04, 06 and 12.
"""

from __future__ import annotations

import importlib
import json
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainerCallback, TrainingArguments

from dsnb.model.load import load_model
from dsnb.model.resolve import ModelLoadError, resolve_model
from dsnb.train.checkpoint import (
    load_best_weights,
    prepare_resume_on_main,
    remove_restored_on_main,
    restore_full_weights,
)
from dsnb.train.config import ConfigError, FinetuneConfig, effective_batch, launch_state, resolve_precision
from dsnb.train.logs import LoggedRun, logged
from dsnb.train.speed import StepTimer
from dsnb.train.trainable import prepare_model

logger = logging.getLogger(__name__)

#: ``stage:`` in a recipe -> ``"module:function"`` that runs it (imported when asked for: the stage modules import
#: this one). A new stage adds its line here; ``dsnb.train.config.STAGES`` lists the same names.
STAGE_RUNNERS: dict[str, str] = {"sft": "dsnb.train.sft:run_sft", "dpo": "dsnb.train.dpo:run_dpo",
                                 "grpo": "dsnb.train.grpo:run_grpo"}


def stage_runner(name: str) -> Callable[..., RunResult]:
    """The function that runs stage ``name`` (called as ``runner(cfg, resume_from=...)``)."""
    if name not in STAGE_RUNNERS:
        raise ConfigError(f"stage={name!r}: use one of {tuple(STAGE_RUNNERS)}")
    module, function = STAGE_RUNNERS[name].split(":")
    return getattr(importlib.import_module(module), function)


@dataclass
class RunResult(LoggedRun):
    """What a run returns: the trained model and everything measured about the run.

    ``train`` / ``eval`` are the stage's data as it built them (``SFTData`` for SFT, preference
    records for DPO).
    """

    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    trainer: Trainer
    train: Any
    eval: Any
    info: dict[str, Any]
    log_history: list[dict[str, Any]]
    seconds: float

    @property
    def eval_losses(self) -> tuple[list[int], list[float]]:
        """(steps, eval loss) as logged."""
        return logged(self.log_history, "eval_loss")


@dataclass
class StageData:
    """A stage's data: the datasets its trainer reads, what the result keeps, and info entries about them."""

    train_dataset: Any
    eval_dataset: Any | None
    train: Any
    eval: Any
    info: dict[str, Any]


@dataclass
class Stage(ABC):
    """What one training stage brings to ``run_stage``; the defaults are SFT's choices."""

    name: str = "stage"
    result_class: ClassVar[type[RunResult]] = RunResult

    def arguments(self, cfg: FinetuneConfig) -> TrainingArguments:
        """The trainer's arguments (built before the model loads)."""
        return cfg.training_arguments()

    def load(self, cfg: FinetuneConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        """The model named by ``cfg.model`` and its tokenizer, in float32."""
        return load_model(cfg.model, dtype=torch.float32)

    def prepare(self, model: PreTrainedModel, cfg: FinetuneConfig) -> tuple[nn.Module, dict[str, Any]]:
        """The config's model choices (dropout, LoRA, freezing) applied; their info entries."""
        return prepare_model(model, cfg)

    @abstractmethod
    def data(self, cfg: FinetuneConfig, model: nn.Module, tokenizer: PreTrainedTokenizerBase, corpus: Any
             ) -> StageData:
        """The training and evaluation data."""

    @abstractmethod
    def trainer(self, cfg: FinetuneConfig, model: nn.Module, tokenizer: PreTrainedTokenizerBase, data: StageData,
                args: TrainingArguments, callbacks: list[TrainerCallback] | None, progress: bool) -> Trainer:
        """The trainer, built with ``args``."""

    def extra_info(self, cfg: FinetuneConfig, trainer: Trainer) -> dict[str, Any]:
        """Info entries of this stage only (none by default)."""
        return {}

    @abstractmethod
    def describe(self, cfg: FinetuneConfig, args: TrainingArguments, info: dict[str, Any]) -> str:
        """The line printed (on the main process) before training starts."""


def check_before_loading(cfg: FinetuneConfig, model: nn.Module | None = None) -> None:
    """The config checks that need no model or data, run before anything loads.

    Precision against this machine (``fp16`` on a CPU), the batch plan against the process count, and
    ``freeze_first_layers`` against the layer count in the model's ``config.json`` (a
    local directory or a course model; read without loading weights). A mistake here fails in
    a second instead of after the model and data have loaded. (Ranges such as dropout's are checked when
    the config is built.)
    """
    resolve_precision(cfg.precision)
    cfg.accumulation_for(launch_state().num_processes)
    if cfg.freeze_first_layers > 0:
        layers = _layer_count(cfg.model) if model is None else getattr(model.config, "num_hidden_layers", None)
        if layers is not None and cfg.freeze_first_layers > layers:
            raise ConfigError(f"freeze_first_layers={cfg.freeze_first_layers} but {cfg.model} has only {layers} "
                              "decoder layers; freeze fewer")


def _layer_count(name: str) -> int | None:
    """``num_hidden_layers`` from a local or course model's config.json (None for hub ids or unreadable configs)."""
    try:
        path = resolve_model(name)
        if isinstance(path, str):
            return None
        layers = json.loads((path / "config.json").read_text()).get("num_hidden_layers")
    except (ModelLoadError, OSError, ValueError, AttributeError):
        return None  # load_model reports what is wrong with it
    return layers if isinstance(layers, int) else None


def run_stage(
    stage: Stage,
    cfg: FinetuneConfig,
    model: PreTrainedModel | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    corpus: Any = None,
    resume_from: str | Path | None = None,
    callbacks: list[TrainerCallback] | None = None,
    progress: bool = True,
) -> RunResult:
    """Train ``cfg.model`` (or the given model) as ``stage`` says; return the model, its logs and timings.

    ``resume_from`` is a checkpoint directory (verified first, see ``dsnb.train.checkpoint.prepare_resume``)
    or ``"auto"`` for the newest complete checkpoint in ``cfg.output_dir``; the run continues with the
    checkpoint's weights (all of them), optimizer, scheduler, RNG states and data position.
    """
    check_before_loading(cfg, model)
    torch.manual_seed(cfg.seed)
    args = stage.arguments(cfg)
    if model is None:
        model, loaded_tok = stage.load(cfg)
        tokenizer = tokenizer or loaded_tok
    if tokenizer is None:
        raise ConfigError("pass the tokenizer together with the model")
    model, info = stage.prepare(model, cfg)
    data = stage.data(cfg, model, tokenizer, corpus)
    trainer = stage.trainer(cfg, model, tokenizer, data, args, callbacks, progress)
    timer = StepTimer()  # the optimizer steps alone: evaluation and checkpoint writing are not training time
    trainer.add_callback(timer)
    model = trainer.model  # a stage's trainer may wrap it (TRL adds the LoRA adapters itself)
    total, trainable = model.num_parameters(), model.num_parameters(only_trainable=True)
    info = {"method": cfg.method, **info, "total": total, "trainable": trainable, "trainable share": trainable / total,
            **data.info, "processes": args.world_size, "accumulation": args.gradient_accumulation_steps,
            "effective_batch": effective_batch(args.per_device_train_batch_size, args.gradient_accumulation_steps,
                                               args.world_size),
            "precision": resolve_precision(cfg.precision), **stage.extra_info(cfg, trainer)}
    if args.process_index == 0:
        print(stage.describe(cfg, args, info), flush=True)
    checkpoint = resumed = None
    if resume_from is not None:  # rank 0 verifies and restores, the other ranks wait for its answer
        found = prepare_resume_on_main(resume_from, cfg.output_dir)
        if found is None:
            logger.warning("resume was asked for, but %s holds no complete checkpoint; starting from scratch",
                           cfg.output_dir)
        else:
            resumed, checkpoint = str(found[0]), str(found[1])
            restore_full_weights(model, checkpoint)
    t0 = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=checkpoint)
    seconds = time.perf_counter() - t0
    best = trainer.state.best_model_checkpoint
    if trainer.args.load_best_model_at_end and best is not None:
        load_best_weights(model, best, cfg.output_dir)
    remove_restored_on_main(cfg.output_dir)
    info.update(train_loss=output.training_loss, steps=trainer.state.global_step, resumed_from=resumed,
                best_checkpoint=best, step_seconds=timer.seconds)
    model.eval()
    return stage.result_class(model, tokenizer, trainer, data.train, data.eval, info,
                              list(trainer.state.log_history), seconds)

"""Supervised fine-tuning (SFT) on ``transformers.Trainer``, from a laptop CPU to many GPUs.

``build_trainer`` / ``run_sft``: a ``transformers.Trainer`` with the warmup-then-floor schedule
(``dsnb.train.schedules``, claim C10), bf16/fp16 where the hardware has it, gradient checkpointing,
label smoothing, early stopping, verified checkpoints (``dsnb.train.checkpoint``) and
``LineProgress``. ``run_sft`` loads the model and data, trains, evaluates and resumes.

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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
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

from dsnb.model.load import load_model
from dsnb.model.routing import ExpertBiasBalancer, routers
from dsnb.progress import LineProgress
from dsnb.train.adversarial import AdversarialMixin, settings_from_config
from dsnb.train.chat import SFTData, data_collator, load_sft_data, to_dataset
from dsnb.train.checkpoint import ManifestCallback, prepare_resume_on_main, remove_restored_on_main
from dsnb.train.config import ConfigError, FinetuneConfig, effective_batch, launch_state, resolve_precision
from dsnb.train.curriculum import CurriculumMixin, schedule_from_config
from dsnb.train.logs import LoggedRun, logged
from dsnb.train.prepare import prepare_model

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
class SFTResult(LoggedRun):
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
    def eval_losses(self) -> tuple[list[int], list[float]]:
        """(steps, eval loss) as logged."""
        return logged(self.log_history, "eval_loss")


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


def load_best_weights(model: nn.Module, best: str | Path, output_dir: str | Path) -> None:
    """Reload the best checkpoint into ``model`` through the resume path (verified, decompressed, converted).

    The Trainer's own ``load_best_model_at_end`` loads with ``strict=False`` (a fused-expert model would
    keep its last-step routed experts) and does not find compressed weights at all; this replaces it.
    """
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    found = prepare_resume_on_main(best, output_dir)
    assert found is not None
    restored = found[1]
    if not restore_full_weights(model, restored):
        result = set_peft_model_state_dict(model, load_file(restored / "adapter_model.safetensors"))
        if result.unexpected_keys:
            raise RuntimeError(f"best checkpoint {best} does not fit the adapters: {result.unexpected_keys}")
    logger.info("reloaded the best checkpoint %s", best)


def check_before_loading(cfg: FinetuneConfig, model: nn.Module | None = None) -> None:
    """The config checks that need no model or data, run before ``run_sft`` loads anything.

    Precision against this machine (``fp16`` on a CPU), the batch plan against the process count,
    dropout, and ``freeze_first_layers`` against the layer count in the model's ``config.json`` (a
    local directory or the course model; read without loading weights). A mistake here fails in
    a second instead of after the model and data have loaded.
    """
    resolve_precision(cfg.precision)
    cfg.accumulation_for(launch_state().num_processes)
    if cfg.dropout is not None and not 0 <= cfg.dropout < 1:
        raise ConfigError(f"dropout must be in [0, 1), got {cfg.dropout}")
    if cfg.freeze_first_layers > 0:
        layers = _layer_count(cfg.model) if model is None else getattr(model.config, "num_hidden_layers", None)
        if layers is not None and cfg.freeze_first_layers > layers:
            raise ConfigError(f"freeze_first_layers={cfg.freeze_first_layers} but {cfg.model} has only {layers} "
                              "decoder layers; freeze fewer")


def _layer_count(name: str) -> int | None:
    """``num_hidden_layers`` from a local model's config.json (None for hub ids or unreadable configs)."""
    import json

    from dsnb.model.pretrain import TINY_MODEL_NAME, base_model_path

    path = base_model_path() if name == TINY_MODEL_NAME else Path(name).expanduser()
    try:
        layers = json.loads((path / "config.json").read_text()).get("num_hidden_layers")
    except (OSError, ValueError, AttributeError):
        return None  # load_model reports what is wrong with it
    return layers if isinstance(layers, int) else None


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

    ``resume_from`` is a checkpoint directory (verified first, see ``dsnb.train.checkpoint.prepare_resume``)
    or ``"auto"`` for the newest complete checkpoint in ``cfg.output_dir``. ``trainer_class`` /
    ``trainer_kwargs`` go to ``build_trainer``.
    """
    check_before_loading(cfg, model)
    torch.manual_seed(cfg.seed)
    # Built first: under DeepSpeed ZeRO-3 these arguments switch on transformers' ZeRO-3 hooks
    # (is_deepspeed_zero3_enabled) that loading and prepare_model rely on.
    args = cfg.training_arguments()
    if model is None:
        model, loaded_tok = load_model(cfg.model, dtype=torch.float32)
        tokenizer = tokenizer or loaded_tok
    if tokenizer is None:
        raise ConfigError("pass the tokenizer together with the model")
    model, info = prepare_model(model, cfg)
    train, evald = load_sft_data(cfg, tokenizer, corpus)
    if not train.examples:
        raise ConfigError(f"no training examples for tasks {list(cfg.tasks)} (train_examples={cfg.train_examples}); "
                          "check the data and the tasks")
    info.update(train_examples=len(train))
    trainer = build_trainer(cfg, model, tokenizer, to_dataset(train.examples), to_dataset(evald.examples),
                            callbacks, progress, args=args, trainer_class=trainer_class,
                            trainer_kwargs=trainer_kwargs)
    info.update(processes=args.world_size, accumulation=args.gradient_accumulation_steps,
                effective_batch=effective_batch(args.per_device_train_batch_size, args.gradient_accumulation_steps,
                                                args.world_size),
                precision=resolve_precision(cfg.precision))
    if args.process_index == 0:
        print(f"sft: {describe_batch(args)}; {info['trainable']:,} of {info['total']:,} parameters trainable "
              f"({cfg.method}); precision {info['precision']}", flush=True)
    checkpoint = resumed = None
    if resume_from is not None:  # rank 0 verifies and restores, the other ranks wait for its answer
        found = prepare_resume_on_main(resume_from, cfg.output_dir)
        if found is None:
            logger.warning("resume was asked for, but %s holds no complete checkpoint; starting from scratch",
                           cfg.output_dir)
        else:
            resumed, checkpoint = str(found[0]), str(found[1])
    if checkpoint is not None:
        restore_full_weights(model, checkpoint)
    t0 = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=checkpoint)
    seconds = time.perf_counter() - t0
    best = trainer.state.best_model_checkpoint
    if trainer.args.load_best_model_at_end and best is not None:
        load_best_weights(model, best, cfg.output_dir)
    remove_restored_on_main(cfg.output_dir)
    info.update(train_loss=output.training_loss, steps=trainer.state.global_step, resumed_from=resumed,
                best_checkpoint=best)
    model.eval()
    return SFTResult(model, tokenizer, trainer, train, evald, info, list(trainer.state.log_history), seconds)

"""Stability guard: catch NaN/Inf before it reaches the weights, back off, and stop cleanly (claim C29).

A single non-finite gradient applied by the optimizer turns every weight it touches into NaN, and
the run is lost from then on. ``StabilityGuard`` checks, for every micro-batch:

- the inputs: no empty batch, token ids inside the vocabulary, labels inside it or ``-100``, float
  inputs finite (a poisoned batch);
- the loss: finite, and (with ``spike_factor``) not a spike: above ``spike_factor`` × the median loss of
  the last ``spike_window`` applied steps, the sign of a run that is diverging while still finite;
- the gradients, right after the backward pass and *before* clipping (clipping a NaN norm spreads
  NaN to every gradient, hiding which parameter was first).

On a bad step it skips the optimizer update (the weights stay as they were), lowers the learning
rate x0.1 (never below ``lr_floor``, 1e-6 by default) and counts; after ``max_bad_steps`` bad steps
in a row it stops training cleanly, saves a checkpoint of the last good weights, verifies it
(``dsnb.train.checkpoint``) and leaves a message naming the step, the tensor and the likely cause
(fp16 overflow, a too-high learning rate, bad data) in ``stop_message``.

With ``transformers.Trainer``: ``trainer_class=GuardedTrainer`` (or ``guarded(SomeTrainer)``) and
``trainer_kwargs={"guard": StabilityGuard()}``, e.g. through ``dsnb.train.sft.build_trainer``. In a
plain loop: ``guarded_step``. Taught in notebook 07.

A spike is caught one update late: the loss that shows it was computed with the weights the previous
update already threw off, so "the last good weights" after a spike stop are finite but worse than the
step before; restart from an earlier checkpoint at a lower rate (the stop message says so).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainerCallback

from dsnb.train.checkpoint import MANIFEST, verify_checkpoint, write_manifest

logger = logging.getLogger(__name__)

FP16_MAX = float(torch.finfo(torch.float16).max)  # 65504


@dataclass
class BadStep:
    """What went wrong in one step."""

    step: int
    tensor: str  # "input_ids", "loss", "grad of model.layers.1.mlp...", ...
    cause: str
    problem: str = "non-finite"  # or "spiking" (a finite loss far above the recent ones)


def check_inputs(inputs: dict[str, Any], vocab_size: int | None) -> tuple[str, str] | None:
    """(tensor, problem) for the first bad input of a batch, or None when the batch is usable."""
    ids = inputs.get("input_ids")
    first = ids if isinstance(ids, torch.Tensor) else inputs.get("inputs_embeds")
    if not isinstance(first, torch.Tensor) or first.numel() == 0:
        return "input_ids", "empty batch (no tokens)"
    mask = inputs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() == 2 and int(mask.sum()) == 0:
        return "attention_mask", "empty batch (every position is padding)"
    for name, t in inputs.items():
        if not isinstance(t, torch.Tensor):
            continue
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name, f"{int((~torch.isfinite(t)).sum())} non-finite values in the batch"
        if name in ("input_ids", "labels") and vocab_size is not None and t.numel():
            ok = (t >= 0) & (t < vocab_size)
            if name == "labels":
                ok |= t == -100
            if not bool(ok.all()):
                bad = t[~ok]
                return name, (f"{bad.numel()} token ids outside the vocabulary [0, {vocab_size}) "
                              f"(e.g. {int(bad[0])})")
    return None


def first_nonfinite_grad(model: nn.Module) -> str | None:
    """Name of the first parameter whose gradient holds NaN or Inf (one device sync when all are finite)."""
    named = [(n, p.grad) for n, p in model.named_parameters() if p.grad is not None]
    if not named:
        return None
    norms = torch.stack([g.detach().float().norm() for _, g in named])
    if bool(torch.isfinite(norms).all()):
        return None
    return next(n for (n, _), v in zip(named, norms.tolist(), strict=True) if not math.isfinite(v))


class StabilityGuard(TrainerCallback):
    """Skip bad updates, back the learning rate off, stop after ``max_bad_steps`` bad steps in a row."""

    def __init__(self, max_bad_steps: int = 3, lr_factor: float = 0.1, lr_floor: float = 1e-6,
                 spike_factor: float | None = None, spike_window: int = 5):
        if max_bad_steps < 1 or not 0 < lr_factor < 1 or lr_floor < 0:
            raise ValueError("max_bad_steps must be >= 1, lr_factor in (0, 1) and lr_floor >= 0")
        if spike_factor is not None and not (math.isfinite(spike_factor) and spike_factor > 1) or spike_window < 1:
            raise ValueError(f"spike_factor={spike_factor!r}, spike_window={spike_window!r}: the factor is a finite number "
                             "above 1 (e.g. 4: a loss four times the recent median) or None, the window >= 1 step")
        self.max_bad_steps, self.lr_factor, self.lr_floor = max_bad_steps, lr_factor, lr_floor
        self.spike_factor, self.spike_window = spike_factor, spike_window
        self.good_losses: list[float] = []  # mean loss of each applied step (the spike check's reference)
        self._step_losses: list[float] = []
        self.bad_steps: list[BadStep] = []
        self.in_a_row = 0
        self.pending: BadStep | None = None
        self.stop_message: str | None = None
        self.checkpoint: Path | None = None
        self._stopping = False

    # ---- checks (micro-batch level) ----
    def see_inputs(self, step: int, inputs: dict[str, Any], vocab_size: int | None) -> bool:
        """True if the batch may be used; otherwise the step is marked bad (cause: bad data)."""
        problem = check_inputs(inputs, vocab_size)
        if problem is not None and self.pending is None:
            self.pending = BadStep(step, problem[0], f"bad data: {problem[1]}")
        return problem is None

    def see_loss(self, step: int, loss: torch.Tensor, fp16: bool) -> None:
        if self.pending is not None:
            return
        if not bool(torch.isfinite(loss.detach()).all()):
            self.pending = BadStep(step, "loss", self._cause(fp16))
            return
        value = float(loss.detach().float().mean())
        self._step_losses.append(value)
        recent = self.good_losses[-self.spike_window:]
        if self.spike_factor is not None and recent:
            median = float(torch.tensor(recent).median())
            if median > 0 and value > self.spike_factor * median:
                self.pending = BadStep(step, "loss", (
                    f"loss {value:.3g} is {value / median:.0f}x the median {median:.3g} of the last {len(recent)} applied "
                    "steps: the run is diverging (learning rate too high); the weights kept are finite but already "
                    "thrown off by the update before it, so restart from an earlier checkpoint at a lower rate"),
                    "spiking")

    def see_grads(self, step: int, model: nn.Module, fp16: bool) -> None:
        if self.pending is None:
            name = first_nonfinite_grad(model)
            if name is not None:
                self.pending = BadStep(step, f"gradient of {name}", self._cause(fp16))

    @staticmethod
    def _cause(fp16: bool) -> str:
        if fp16:
            return (f"fp16 overflow (a value above {FP16_MAX:g}): train in bf16, or keep fp16 with loss scaling "
                    "and a lower learning rate")
        return "learning rate too high (or a bad batch upstream): the loss or gradients blew up with finite inputs"

    # ---- the optimizer step ----
    def before_optimizer(self, model: nn.Module, optimizer: Any, scheduler: Any = None, scaler: bool = False) -> bool:
        """Decide the step: True = apply it. A bad step's update is skipped and the learning rate lowered."""
        bad, self.pending = self.pending, None
        step_losses, self._step_losses = self._step_losses, []
        if bad is None:
            self.in_a_row = 0
            if step_losses:
                self.good_losses.append(sum(step_losses) / len(step_losses))
            return True
        self.bad_steps.append(bad)
        self.in_a_row += 1
        for p in model.parameters():  # torch optimizers skip parameters without a gradient
            if p.grad is not None:
                if scaler:  # a GradScaler asserts it saw gradients; inf makes it skip the step by itself
                    p.grad.fill_(float("inf"))
                else:
                    p.grad = None
        new_lr = self._lower_lr(optimizer, scheduler)
        logger.warning("step %d: %s %s (%s): update skipped, learning rate now %.3g (%d bad in a row)",
                       bad.step, bad.problem, bad.tensor, bad.cause, new_lr, self.in_a_row)
        return False

    def _lower_lr(self, optimizer: Any, scheduler: Any) -> float:
        groups = optimizer.param_groups
        for g in groups:
            g["lr"] = max(g["lr"] * self.lr_factor, self.lr_floor)
        if scheduler is not None and hasattr(scheduler, "base_lrs"):  # the schedule would undo it next step
            scheduler.base_lrs = [max(b * self.lr_factor, self.lr_floor) for b in scheduler.base_lrs]
        return groups[0]["lr"]

    @property
    def should_stop(self) -> bool:
        return self.in_a_row >= self.max_bad_steps

    def stop(self, checkpoint: str | Path | None) -> str:
        """Verify the saved checkpoint (writing its manifest if nobody did) and compose the stop message."""
        last = self.bad_steps[-1]
        where = "no checkpoint saved"
        if checkpoint is not None:
            checkpoint = Path(checkpoint)
            if not (checkpoint / MANIFEST).is_file():
                write_manifest(checkpoint)
            verify_checkpoint(checkpoint)
            self.checkpoint = checkpoint
            kept = "last good weights" if last.problem == "non-finite" else "weights of the last applied step"
            where = f"{kept} saved and verified in {checkpoint}"
        self.stop_message = (f"training stopped at step {last.step} after {self.in_a_row} bad steps in a row: "
                             f"{last.problem} {last.tensor}; likely cause: {last.cause}; {where}")
        logger.error(self.stop_message)
        return self.stop_message

    # ---- TrainerCallback (the Trainer side is in GuardedTrainer) ----
    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kw):
        trainer_model = model
        scaler = getattr(getattr(optimizer, "scaler", None), "is_enabled", lambda: False)()
        self.before_optimizer(trainer_model, optimizer, lr_scheduler, scaler=scaler)

    def on_step_end(self, args, state, control, **kwargs):
        if self.should_stop and not self._stopping:
            self._stopping = True
            control.should_training_stop = True
            control.should_save = True

    def on_save(self, args, state, control, **kwargs):
        if self._stopping and self.stop_message is None and state.is_world_process_zero:
            self.stop(Path(args.output_dir) / f"checkpoint-{state.global_step}")


def guarded(trainer_class: type[Trainer]) -> type[Trainer]:
    """``trainer_class`` with the guard's checks in ``training_step`` (pass ``guard=StabilityGuard()``)."""

    class Guarded(trainer_class):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, guard: StabilityGuard | None = None, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.guard = guard or StabilityGuard()
            self.add_callback(self.guard)

        def _fp16(self, model: nn.Module) -> bool:
            return bool(self.args.fp16) or any(p.dtype == torch.float16 for p in model.parameters())

        def training_step(self, model, inputs, num_items_in_batch=None):
            step = self.state.global_step + 1
            vocab = getattr(getattr(self.model, "config", None), "vocab_size", None)
            if not self.guard.see_inputs(step, inputs, vocab):
                return torch.zeros((), device=self.args.device)  # no forward, no backward: nothing to apply
            loss = super().training_step(model, inputs, num_items_in_batch)
            fp16 = self._fp16(model)
            self.guard.see_loss(step, loss, fp16)
            self.guard.see_grads(step, model, fp16)
            return loss

    Guarded.__name__ = Guarded.__qualname__ = f"Guarded{trainer_class.__name__}"
    return Guarded


GuardedTrainer = guarded(Trainer)


def guarded_step(
    model: nn.Module,
    batch: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    guard: StabilityGuard,
    step: int,
    scheduler: Any = None,
    max_grad_norm: float | None = None,
) -> bool:
    """One guarded optimizer step of a plain loop (forward, backward, checks, maybe the update).

    Returns True if the update was applied. Check ``guard.should_stop`` afterwards and save/stop.
    """
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    fp16 = any(p.dtype == torch.float16 for p in model.parameters())
    optimizer.zero_grad(set_to_none=True)
    if guard.see_inputs(step, batch, vocab):
        loss = model(**batch).loss
        guard.see_loss(step, loss, fp16)
        loss.backward()
        guard.see_grads(step, model, fp16)
    applied = guard.before_optimizer(model, optimizer, scheduler)
    if applied:
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return applied

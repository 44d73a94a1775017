"""Training monitor: TensorBoard event files with loss, LR, gradient norms, activations and MoE expert load.

``TrainingMonitor`` is a ``TrainerCallback`` (pass it in ``callbacks=``) that can also be driven from a
plain PyTorch loop (``step_begin`` / ``before_optimizer`` / ``step_end`` / ``log_scalars``). It writes
through ``torch.utils.tensorboard`` so ``tensorboard --logdir DIR`` (or TensorBoard's
``EventAccumulator``) reads the result; Weights & Biases / MLflow keep working through the Trainer's
``report_to`` unchanged. What it records:

- ``loss``, ``learning_rate``, ``grad_norm`` (the Trainer's, measured *before* clipping) at every
  Trainer log, ``grad_norm/after_clip`` and ``grad_norm/<layer>`` (what the optimizer receives, after
  clipping) every ``grad_every`` steps (10 by default: on a tiny model that walk over every gradient
  costs about a tenth of a step), and ``tokens_per_s``;
- every ``histogram_every`` steps, histograms of each layer's weights and gradients;
- every ``activation_every`` steps, the mean, std and max |x| of each decoder layer's output, from
  forward hooks attached for that one step and removed afterwards;
- DeepSeek MoE: tokens routed to each expert of each MoE layer over a window of ``moe_every`` steps,
  the imbalance (busiest / mean and the coefficient of variation), each router's
  ``e_score_correction_bias`` and the dead experts (no token in the window). Routers are found the way
  ``dsnb.model.routing`` finds them, so fused-expert models of transformers 5 and LoRA-wrapped models work;
- alerts: gradient norm outside ``grad_band`` (the rule of thumb 1.0 +- 0.3), a layer's activation std
  drifting more than ``activation_drift`` x from its first sample, an expert with no tokens. Each alert
  is logged with step and layer and written to the event file as text (tag ``alerts``).

On several processes only rank 0 writes. Taught in notebook 07.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback

from dsnb.model.routing import add_routed_tokens, routers

logger = logging.getLogger(__name__)

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)(?:\.|$)")


def layer_of(name: str) -> str:
    """The group a parameter or module belongs to: ``layer_03``, ``embed``, ``lm_head`` or ``other``."""
    m = _LAYER.search(name)
    if m:
        return f"layer_{int(m.group(1)):02d}"
    if "embed" in name:
        return "embed"
    if "lm_head" in name:
        return "lm_head"
    return "other"


def grad_norms(model: nn.Module) -> tuple[float, dict[str, float]]:
    """Global L2 norm of all gradients and the L2 norm per layer group (``layer_of``)."""
    groups: dict[str, list[torch.Tensor]] = {}
    for name, p in model.named_parameters():
        if p.grad is not None:
            groups.setdefault(layer_of(name), []).append(p.grad.detach())
    if not groups:
        return 0.0, {}
    names = sorted(groups)
    per = torch.stack([torch.stack([n.float() for n in torch._foreach_norm(groups[k])]).pow(2).sum()
                       for k in names]).cpu()  # one fused norm kernel per group, one device sync
    return float(per.sum().sqrt()), {k: float(v) for k, v in zip(names, per.sqrt(), strict=True)}


def activation_stats(x: torch.Tensor) -> dict[str, float]:
    """Mean, std and max |x| of one activation tensor (what the monitor logs per layer)."""
    x = x.detach().float()
    return {"mean": float(x.mean()), "std": float(x.std()), "max_abs": float(x.abs().max())}


def imbalance(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per layer: busiest expert / mean load, and the coefficient of variation (std / mean) of the load."""
    counts = counts.float()
    mean = counts.mean(dim=-1).clamp_min(1e-9)
    return counts.max(dim=-1).values / mean, counts.std(dim=-1, unbiased=False) / mean


def calibrated_band(grad_norms: list[tuple[int, float]], after: int, steps: int = 10,
                    factor: float = 2.0) -> tuple[float, float]:
    """An alert band for the raw gradient norm taken from a run itself (``TrainingMonitor(grad_band=...)``).

    The median of the ``(step, norm)`` points in ``(after, after + steps]`` (the first steps after
    warmup of a healthy run), divided and multiplied by ``factor``. Notebook 07 shows why a fixed
    band such as 1.0 +- 0.3 does not carry over between models.
    """
    window = sorted(v for s, v in grad_norms if after < s <= after + steps)
    if not window or factor <= 1:
        raise ValueError(f"need gradient norms logged in steps {after + 1}..{after + steps} and a factor > 1 "
                         f"(got {len(window)} points, factor {factor})")
    mid = len(window) // 2
    median = window[mid] if len(window) % 2 else (window[mid - 1] + window[mid]) / 2
    return median / factor, median * factor


@dataclass
class Alert:
    """One alert: when, where, what."""

    step: int
    kind: str  # "grad_norm", "activation_drift", "dead_expert"
    layer: str
    message: str


class TrainingMonitor(TrainerCallback):
    """Write training signals and alerts to TensorBoard event files under ``log_dir`` (see the module doc).

    Everything written is also kept in ``history`` (tag -> list of (step, value)) and ``alerts``.
    """

    def __init__(
        self,
        model: nn.Module,
        log_dir: str | Path,
        grad_every: int = 10,
        histogram_every: int = 50,
        activation_every: int = 10,
        moe_every: int = 10,
        grad_band: tuple[float, float] = (0.7, 1.3),
        activation_drift: float = 2.0,
        write: bool = True,
    ):
        if min(grad_every, histogram_every, activation_every, moe_every) < 1:
            raise ValueError("grad_every, histogram_every, activation_every and moe_every must be >= 1 (steps)")
        if not grad_band[0] < grad_band[1]:
            raise ValueError(f"grad_band must be (low, high) with low < high, got {grad_band}")
        self.model = model
        self.log_dir = Path(log_dir)
        self.grad_every, self.histogram_every = grad_every, histogram_every
        self.activation_every, self.moe_every = activation_every, moe_every
        self.grad_band, self.activation_drift = grad_band, activation_drift
        self.history: dict[str, list[tuple[int, float]]] = {}
        self.alerts: list[Alert] = []
        self.expert_counts: list[tuple[int, torch.Tensor]] = []  # (step, (moe_layers, experts)) per window
        self._writer = None
        self._write = write
        self._act_handles: list[Any] = []
        self._act: dict[str, list[float]] = {}  # layer -> [n, sum, sumsq, max_abs]
        self._act_ref: dict[str, float] = {}
        self._tokens = 0
        self._t0: float | None = None
        self._mask: torch.Tensor | None = None
        self.routers = routers(model)
        self._router_layer = [layer_of(n) for n, _ in self.routers]
        self._counts = [torch.zeros_like(r.e_score_correction_bias, dtype=torch.float64) for _, r in self.routers]
        self._handles = [model.register_forward_pre_hook(self._see_inputs, with_kwargs=True)]
        self._handles += [r.register_forward_hook(self._count(i)) for i, (_, r) in enumerate(self.routers)]

    # ---- writing ---------------------------------------------------------------------------------
    @property
    def writer(self):
        if self._writer is None and self._write:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.log_dir))
        return self._writer

    def scalar(self, tag: str, value: float, step: int) -> None:
        """Record one scalar (history + event file)."""
        value = float(value)
        self.history.setdefault(tag, []).append((step, value))
        if self.writer is not None:
            self.writer.add_scalar(tag, value, step)

    def log_scalars(self, step: int, values: dict[str, float]) -> None:
        """Record several scalars; ``grad_norm`` is checked against the band. For plain loops and ``on_log``."""
        for k, v in values.items():
            if isinstance(v, (int, float)) or (isinstance(v, torch.Tensor) and v.numel() == 1):
                self.scalar(k, float(v), step)
        if "grad_norm" in values:
            g = float(values["grad_norm"])
            lo, hi = self.grad_band
            if not lo <= g <= hi:
                self.alert(step, "grad_norm", "all", f"gradient norm {g:.3g} outside the band [{lo:g}, {hi:g}]")

    def alert(self, step: int, kind: str, layer: str, message: str) -> None:
        """Record an alert: logger warning, ``alerts`` list and text in the event file."""
        a = Alert(step, kind, layer, message)
        self.alerts.append(a)
        logger.warning("step %d %s [%s]: %s", step, kind, layer, message)
        if self.writer is not None:
            self.writer.add_text("alerts", f"step {step} {kind} [{layer}]: {message}", step)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file and remove every hook from the model."""
        self._remove_activation_hooks()
        for h in self._handles:
            h.remove()
        self._handles = []
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # ---- hooks -----------------------------------------------------------------------------------
    def _see_inputs(self, module, args, kwargs):
        if not module.training:
            return
        mask = kwargs.get("attention_mask")
        ids = kwargs.get("input_ids", args[0] if args else None)
        self._mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None
        if self._mask is not None:
            self._tokens += int(self._mask.sum())
        elif isinstance(ids, torch.Tensor):
            self._tokens += ids.numel()

    def _count(self, i: int):
        def hook(module, _inputs, output):
            if module.training:
                add_routed_tokens(self._counts[i], output, self._mask)

        return hook

    def _act_hook(self, layer: str):
        def hook(module, _inputs, output):
            x = output[0] if isinstance(output, tuple) else output
            if not isinstance(x, torch.Tensor):
                return
            x = x.detach().float()
            acc = self._act.setdefault(layer, [0.0, 0.0, 0.0, 0.0])
            acc[0] += x.numel()
            acc[1] += float(x.sum())
            acc[2] += float(x.pow(2).sum())
            acc[3] = max(acc[3], float(x.abs().max()))

        return hook

    def _remove_activation_hooks(self) -> None:
        for h in self._act_handles:
            h.remove()
        self._act_handles = []

    # ---- the step, for Trainer callbacks and plain loops -----------------------------------------
    def step_begin(self, step: int) -> None:
        """Before the forward pass(es) of optimizer step ``step + 1``: attach activation hooks when due."""
        if self._t0 is None:
            self._t0 = time.perf_counter()
        if (step + 1) % self.activation_every == 0 and not self._act_handles:
            self._act = {}
            for name, m in self.model.named_modules():
                if re.search(r"(?:^|\.)layers\.\d+$", name):
                    self._act_handles.append(m.register_forward_hook(self._act_hook(layer_of(name))))

    def before_optimizer(self, step: int) -> None:
        """Gradients are final (after clipping in the Trainer): per-layer norms and histograms when due."""
        if step % self.grad_every == 0:
            total, per = grad_norms(self.model)
            self.scalar("grad_norm/after_clip", total, step)
            for k, v in per.items():
                self.scalar(f"grad_norm/{k}", v, step)
        if step % self.histogram_every == 0 and self.writer is not None:
            groups_w: dict[str, list[torch.Tensor]] = {}
            groups_g: dict[str, list[torch.Tensor]] = {}
            for name, p in self.model.named_parameters():
                if p.requires_grad:
                    groups_w.setdefault(layer_of(name), []).append(p.detach().float().reshape(-1).cpu())
                    if p.grad is not None:
                        groups_g.setdefault(layer_of(name), []).append(p.grad.detach().float().reshape(-1).cpu())
            for k, v in groups_w.items():
                self.writer.add_histogram(f"weights/{k}", torch.cat(v), step)
            for k, v in groups_g.items():
                self.writer.add_histogram(f"grads/{k}", torch.cat(v), step)

    def step_end(self, step: int, lr: float | None = None) -> None:
        """After optimizer step ``step``: tokens/s, activation stats, expert load at window ends."""
        now = time.perf_counter()
        if self._t0 is not None and now > self._t0 and self._tokens:
            self.scalar("tokens_per_s", self._tokens / (now - self._t0), step)
        self._t0, self._tokens = now, 0
        if lr is not None:
            self.scalar("learning_rate/optimizer", lr, step)
        if self._act_handles:
            self._remove_activation_hooks()
            self._write_activations(step)
        if self.routers and step % self.moe_every == 0:
            self._write_moe(step)

    def _write_activations(self, step: int) -> None:
        for layer, (n, s, ss, mx) in sorted(self._act.items()):
            if n < 2:
                continue
            mean = s / n
            std = max(ss / n - mean * mean, 0.0) ** 0.5 * (n / (n - 1)) ** 0.5
            self.scalar(f"activation/{layer}/mean", mean, step)
            self.scalar(f"activation/{layer}/std", std, step)
            self.scalar(f"activation/{layer}/max_abs", mx, step)
            ref = self._act_ref.setdefault(layer, std)
            if ref > 0 and not 1 / self.activation_drift <= std / ref <= self.activation_drift:
                self.alert(step, "activation_drift", layer,
                           f"activation std {std:.3g} is {std / ref:.2f}x its first sample {ref:.3g}")
        self._act = {}

    def _write_moe(self, step: int) -> None:
        counts = torch.stack([c.cpu() for c in self._counts])
        if counts.sum() == 0:
            return
        self.expert_counts.append((step, counts.clone()))
        peak, cv = imbalance(counts)
        for i, ((_, router), layer) in enumerate(zip(self.routers, self._router_layer, strict=True)):
            for e, c in enumerate(counts[i].tolist()):
                self.scalar(f"moe/{layer}/tokens/expert_{e:02d}", c, step)
            self.scalar(f"moe/{layer}/imbalance_max_over_mean", peak[i], step)
            self.scalar(f"moe/{layer}/imbalance_cv", cv[i], step)
            bias = router.e_score_correction_bias.detach().float().cpu()
            for e, b in enumerate(bias.tolist()):
                self.scalar(f"moe/{layer}/bias/expert_{e:02d}", b, step)
            dead = [e for e, c in enumerate(counts[i].tolist()) if c == 0]
            self.scalar(f"moe/{layer}/dead_experts", len(dead), step)
            if dead:
                self.alert(step, "dead_expert", layer,
                           f"experts {dead} received no tokens in the last {self.moe_every} steps")
            self._counts[i].zero_()

    # ---- TrainerCallback -------------------------------------------------------------------------
    def on_step_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.step_begin(state.global_step)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.before_optimizer(state.global_step + 1)

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        if state.is_world_process_zero:
            lr = optimizer.param_groups[0]["lr"] if optimizer is not None else None
            self.step_end(state.global_step, lr)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            self.log_scalars(state.global_step, {k: v for k, v in logs.items() if k in
                                                 ("loss", "learning_rate", "grad_norm", "eval_loss")})

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.flush()

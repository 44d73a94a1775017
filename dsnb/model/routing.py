"""MoE routing during training: DeepSeek-V3's auxiliary-loss-free load balancing, and load statistics.

DeepSeek-V3's router picks each token's experts by ``score + e_score_correction_bias``; the bias is
not learned by gradient descent. After every optimizer step it moves by a fixed ``gamma`` toward
balance: down for experts that received more than the mean load, up for those that received less.
transformers keeps the bias as a buffer and never updates it, so training with a plain ``Trainer``
silently turns the balancing off. ``ExpertBiasBalancer`` turns it back on as a ``TrainerCallback``.
Taught in notebook 01 (pretraining) and used in the monitoring notebook.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from transformers import TrainerCallback

logger = logging.getLogger(__name__)


def routers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The MoE routers that carry DeepSeek-V3's balancing bias, with their names."""
    return [(n, m) for n, m in model.named_modules() if isinstance(getattr(m, "e_score_correction_bias", None),
                                                                   torch.Tensor)]


def load_imbalance(load: torch.Tensor) -> torch.Tensor:
    """Busiest expert's load divided by the mean load, per layer (1.0 = perfectly balanced).

    Empty for an empty load (a dense model has no MoE layers).
    """
    load = load.float()
    if load.numel() == 0:
        return load.new_zeros(load.shape[:-1])
    return load.max(dim=-1).values / load.mean(dim=-1).clamp_min(1e-9)


class ExpertBiasBalancer(TrainerCallback):
    """Auxiliary-loss-free balancing (DeepSeek-V3): update each router's bias after every optimizer step.

    ``bias += gamma * sign(mean_load - load)``, with the load counted over all micro-batches of the
    step (training-mode forward passes only). DeepSeek-V3 used ``gamma = 0.001``.
    """

    def __init__(self, model: nn.Module, gamma: float = 1e-3):
        self.gamma = gamma
        self.routers = routers(model)
        if not self.routers:
            logger.warning("ExpertBiasBalancer: %s has no router with e_score_correction_bias; nothing to balance",
                           type(model).__name__)
        self.counts = [torch.zeros_like(r.e_score_correction_bias, dtype=torch.float64) for _, r in self.routers]
        self.handles = [r.register_forward_hook(self._hook(i)) for i, (_, r) in enumerate(self.routers)]

    def _hook(self, i: int):
        def hook(module, _inputs, output):
            if not module.training:
                return
            idx = next(t for t in output if isinstance(t, torch.Tensor) and not t.is_floating_point())
            self.counts[i] += torch.bincount(idx.reshape(-1), minlength=self.counts[i].numel()).to(
                self.counts[i].device, torch.float64)

        return hook

    @torch.no_grad()
    def update(self) -> None:
        """Move every router's bias one step toward balance and reset the counts."""
        for (_, router), counts in zip(self.routers, self.counts, strict=True):
            if counts.sum() == 0:
                continue
            step = self.gamma * torch.sign(counts.mean() - counts)
            router.e_score_correction_bias += step.to(router.e_score_correction_bias.dtype)
            counts.zero_()

    def on_step_end(self, args, state, control, **kwargs):
        self.update()

    def remove(self) -> None:
        """Detach the hooks from the model."""
        for h in self.handles:
            h.remove()
        self.handles = []

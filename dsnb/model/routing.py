"""MoE routing during training: DeepSeek-V3's auxiliary-loss-free load balancing, and load statistics.

DeepSeek-V3's router picks each token's experts by ``score + e_score_correction_bias``; the bias is
not learned by gradient descent. After every optimizer step it moves by a fixed step (the paper's γ,
``bias_update_rate`` everywhere in dsnb: this callback, ``PretrainConfig`` and ``FinetuneConfig``) toward
balance: down for experts that received more than the mean load, up for those that received less.
transformers keeps the bias as a buffer and never updates it, so training with a plain ``Trainer``
silently turns the balancing off. ``ExpertBiasBalancer`` turns it back on as a ``TrainerCallback``.
Under data parallelism every process counts its own tokens; the counts are summed over all
processes before the bias moves, so every replica moves it the same way (DeepSeek-V3 balances over
the whole batch). Padded positions are not counted.
Taught in notebook 01 (pretraining) and used in the monitoring notebook.
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
from torch import nn
from transformers import TrainerCallback

logger = logging.getLogger(__name__)


def routers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The MoE routers that carry DeepSeek-V3's balancing bias, with their names."""
    return [(n, m) for n, m in model.named_modules() if isinstance(getattr(m, "e_score_correction_bias", None),
                                                                   torch.Tensor)]


def add_routed_tokens(counts: torch.Tensor, router_output: tuple, mask: torch.Tensor | None) -> None:
    """Add one router call's top-k expert choices to ``counts`` (one slot per expert), in place.

    ``router_output`` is what a DeepSeek router returns (its integer tensor holds the chosen experts per
    token); positions where the 2-D attention ``mask`` is 0 are padding and are not counted.
    """
    idx = next(t for t in router_output if isinstance(t, torch.Tensor) and not t.is_floating_point())
    idx = idx.reshape(-1, idx.shape[-1])
    if mask is not None and mask.numel() == idx.shape[0]:
        idx = idx[mask.reshape(-1).to(idx.device) != 0]  # padded positions route nothing real
    counts += torch.bincount(idx.reshape(-1), minlength=counts.numel()).to(counts.device, torch.float64)


def load_imbalance(load: torch.Tensor) -> torch.Tensor:
    """Busiest expert's load divided by the mean load, per layer (1.0 = perfectly balanced).

    Empty for an empty load (a dense model has no MoE layers).
    """
    load = load.float()
    if load.numel() == 0:
        return load.new_zeros(load.shape[:-1])
    return load.max(dim=-1).values / load.mean(dim=-1).clamp_min(1e-9)


#: DeepSeek-V3's bias step γ. The course's short runs use their own: pretraining 0.005 (``PretrainConfig``: 400
#: steps need a larger step to balance at all), fine-tuning 0 unless a recipe sets it (as a plain ``Trainer`` does).
DEEPSEEK_V3_BIAS_UPDATE_RATE = 1e-3


class ExpertBiasBalancer(TrainerCallback):
    """Auxiliary-loss-free balancing (DeepSeek-V3): update each router's bias after every optimizer step.

    ``bias += bias_update_rate * sign(mean_load - load)``, with the load counted over all micro-batches of
    the step (training-mode forward passes only, padding excluded) and summed over all data-parallel
    processes. The default is DeepSeek-V3's γ = 0.001 (``DEEPSEEK_V3_BIAS_UPDATE_RATE``).
    """

    def __init__(self, model: nn.Module, bias_update_rate: float = DEEPSEEK_V3_BIAS_UPDATE_RATE):
        self.bias_update_rate = bias_update_rate
        self.routers = routers(model)
        if not self.routers:
            logger.warning("ExpertBiasBalancer: %s has no router with e_score_correction_bias; nothing to balance",
                           type(model).__name__)
        self.counts = [torch.zeros_like(r.e_score_correction_bias, dtype=torch.float64) for _, r in self.routers]
        self._mask: torch.Tensor | None = None
        self.handles = [model.register_forward_pre_hook(self._remember_mask, with_kwargs=True)]
        self.handles += [r.register_forward_hook(self._hook(i)) for i, (_, r) in enumerate(self.routers)]

    def _remember_mask(self, _module, args, kwargs):
        mask = kwargs.get("attention_mask")
        self._mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None

    def _hook(self, i: int):
        def hook(module, _inputs, output):
            if module.training:
                add_routed_tokens(self.counts[i], output, self._mask)

        return hook

    @torch.no_grad()
    def update(self) -> None:
        """Move every router's bias one step toward balance and reset the counts.

        With several processes the counts are all-reduced (summed) first, so every rank applies the
        same step and the replicas' biases stay identical.
        """
        if self.counts and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            total = torch.stack(self.counts)
            dist.all_reduce(total, op=dist.ReduceOp.SUM)
            for counts, summed in zip(self.counts, total, strict=True):
                counts.copy_(summed)
        for (_, router), counts in zip(self.routers, self.counts, strict=True):
            if counts.sum() == 0:
                continue
            step = self.bias_update_rate * torch.sign(counts.mean() - counts)
            router.e_score_correction_bias += step.to(router.e_score_correction_bias.dtype)
            counts.zero_()

    def on_step_end(self, args, state, control, **kwargs):
        self.update()

    def remove(self) -> None:
        """Detach the hooks from the model."""
        for h in self.handles:
            h.remove()
        self.handles = []

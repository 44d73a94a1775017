"""Adversarial training on the input embeddings: FGSM, FGM and K-step PGD, inside ``transformers.Trainer``.

Claim C19 (FGSM with epsilon = 0.01 improves generalisation). After the usual forward/backward, the
gradient of the loss with respect to the input embeddings ``g`` gives a perturbation

- FGSM: ``delta = epsilon * sign(g)`` (every coordinate moves by epsilon);
- FGM: ``delta = epsilon * g / ||g||_2`` (the norm taken per sequence);
- PGD: K signed steps of size ``alpha``, projected back into the epsilon box after each;

and one extra forward/backward on ``embeddings + delta`` adds the adversarial loss's gradient to the
clean one (so a step costs about twice as much). The perturbation is added to the embedding layer's
*output* through a forward hook that is always removed (``finally``): the embedding weights are never
modified, with LoRA (frozen embeddings) as with full fine-tuning, and gradient accumulation works as
usual because each micro-batch gets its own perturbation. ``AdversarialMixin`` plugs it into the
Trainer (``FinetuneConfig.adversarial``); ``perturbed_loss`` measures a model under the same attack.

Taught in notebook 05.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dsnb.train.config import ConfigError, FinetuneConfig

METHODS = ("fgsm", "fgm", "pgd")


@dataclass(frozen=True)
class AdversarialSettings:
    """Which attack, how large (``epsilon``), and PGD's step count and step size."""

    method: str = "fgsm"
    epsilon: float = 0.01
    steps: int = 1  # PGD: K
    alpha: float | None = None  # PGD step size (default 2.5 * epsilon / K)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"adversarial={self.method!r}: use one of {METHODS} (or null for none)")
        if not self.epsilon > 0 or self.steps < 1:
            raise ConfigError("adversarial_epsilon must be > 0 and adversarial_steps >= 1")


def settings_from_config(cfg: FinetuneConfig) -> AdversarialSettings | None:
    """The adversarial settings ``cfg`` asks for (None when off)."""
    if not cfg.adversarial:
        return None
    return AdversarialSettings(cfg.adversarial, float(cfg.adversarial_epsilon), int(cfg.adversarial_steps))


def fgsm_delta(grad: torch.Tensor, epsilon: float) -> torch.Tensor:
    """FGSM: epsilon times the sign of the gradient."""
    return epsilon * grad.sign()


def fgm_delta(grad: torch.Tensor, epsilon: float) -> torch.Tensor:
    """FGM: the gradient scaled to L2 norm epsilon, per sequence (a zero gradient gives a zero delta)."""
    norm = grad.flatten(1).norm(dim=1).view(-1, *([1] * (grad.dim() - 1)))
    return epsilon * grad / norm.clamp_min(1e-12)


def perturbation(grad: torch.Tensor, method: str, epsilon: float) -> torch.Tensor:
    """The one-step perturbation for ``method`` (``pgd`` starts with an FGSM step)."""
    return fgm_delta(grad, epsilon) if method == "fgm" else fgsm_delta(grad, epsilon)


def input_embeddings(model: nn.Module) -> nn.Module:
    """The module whose output is the input embeddings (through peft / DDP wrappers)."""
    inner = getattr(model, "module", model)
    return inner.get_input_embeddings()


@contextmanager
def embedding_hook(model: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor | None]) -> Iterator[None]:
    """Run ``fn`` on the input embeddings of every forward pass inside the block (removed on exit or error)."""
    handle = input_embeddings(model).register_forward_hook(lambda _m, _i, out: fn(out))
    try:
        yield
    finally:
        handle.remove()


class _Capture:
    """Keeps the embeddings of the last forward pass with their gradient (for frozen embeddings too)."""

    def __init__(self) -> None:
        self.tensor: torch.Tensor | None = None

    def __call__(self, out: torch.Tensor) -> torch.Tensor:
        if not out.requires_grad:
            out = out.detach().requires_grad_()
        else:
            out.retain_grad()
        self.tensor = out
        return out

    def grad(self) -> torch.Tensor:
        if self.tensor is None or self.tensor.grad is None:
            raise RuntimeError("no gradient reached the input embeddings; is the loss connected to the inputs?")
        return self.tensor.grad.detach()


def _add(delta: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda out: out + delta.to(out.dtype)


def pgd_delta(loss_fn: Callable[[], torch.Tensor], model: nn.Module, grad: torch.Tensor,
              settings: AdversarialSettings) -> torch.Tensor:
    """K signed-gradient steps inside the epsilon box, starting from the clean gradient ``grad``.

    ``loss_fn()`` runs a forward pass and returns the loss; intermediate steps use
    ``torch.autograd.grad`` so no parameter gradient is touched.
    """
    eps = settings.epsilon
    alpha = settings.alpha if settings.alpha is not None else 2.5 * eps / settings.steps
    delta = (alpha * grad.sign()).clamp(-eps, eps)
    for _ in range(settings.steps - 1):
        d = delta.clone().requires_grad_()
        with embedding_hook(model, _add(d)):
            (g,) = torch.autograd.grad(loss_fn(), d)
        delta = (delta + alpha * g.sign()).clamp(-eps, eps)
    return delta


class AdversarialMixin:
    """A ``transformers.Trainer`` mixin: with ``adversarial=AdversarialSettings(...)`` every micro-batch
    adds the loss on perturbed embeddings to its gradient. The logged loss stays the clean loss."""

    def __init__(self, *args: Any, adversarial: AdversarialSettings | None = None, **kwargs: Any) -> None:
        self.adversarial = adversarial
        super().__init__(*args, **kwargs)

    def training_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        if self.adversarial is None:
            return super().training_step(model, inputs, num_items_in_batch)
        settings = self.adversarial
        capture = _Capture()
        with embedding_hook(model, capture):
            clean = super().training_step(model, inputs, num_items_in_batch)
        grad = capture.grad()
        capture.tensor = None
        if settings.method == "pgd" and settings.steps > 1:
            inner = self.accelerator.unwrap_model(model)
            prepared = self._prepare_inputs(inputs)
            delta = pgd_delta(lambda: self.compute_loss(inner, prepared, num_items_in_batch=num_items_in_batch),
                              inner, grad, settings)
        else:
            delta = perturbation(grad, settings.method, settings.epsilon)
        with embedding_hook(model, _add(delta)):
            super().training_step(model, inputs, num_items_in_batch)
        return clean


def perturbed_loss(model: nn.Module, batch: dict[str, torch.Tensor], method: str = "fgsm",
                   epsilon: float = 0.01) -> tuple[float, float]:
    """(clean loss, loss under the ``method`` attack of size ``epsilon``) on one batch; parameters untouched."""
    model.eval()
    capture = _Capture()
    with embedding_hook(model, capture):
        clean = model(**batch).loss
    (grad,) = torch.autograd.grad(clean, capture.tensor)
    delta = perturbation(grad, method, epsilon)
    with torch.no_grad(), embedding_hook(model, _add(delta)):
        attacked = model(**batch).loss
    return clean.item(), attacked.item()

"""Where a model's weights live: one reader for any ``nn.Module``, PEFT wrappers and plain modules included.

``PreTrainedModel.device`` exists only on transformers models; the course also moves inputs for peft
wrappers, a ``ModuleDict`` of routers and test modules, so every such place asks ``model_device``.
"""

from __future__ import annotations

import torch
from torch import nn


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (where its inputs must go)."""
    try:
        return next(model.parameters()).device
    except StopIteration:
        raise ValueError(f"{type(model).__name__} has no parameters, so it has no device to send inputs to") from None

"""Training: recipes, one run path for every stage (SFT, distillation, DPO), losses, schedules, checkpoints,
evaluation, monitoring (notebooks 03-08).

Importing it registers the builder of the course's SFT model (``dsnb-tiny-sft``, trained here) with
``dsnb.model.resolve``, so ``load_model("dsnb-tiny-sft")`` builds it on first use in any process that trains.
"""

import logging
from pathlib import Path

import torch

from dsnb.model.resolve import TINY_SFT_NAME, register_builder


class _ExpectedCPUNotice(logging.Filter):
    """Drops DeepSpeed's "Setting accelerator to CPU" warning, which TRL's import triggers on every CPU run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Setting accelerator to CPU" not in record.getMessage()


if not torch.cuda.is_available():  # where torch sees a GPU the notice would mean something: keep it there
    logging.getLogger("DeepSpeed").addFilter(_ExpectedCPUNotice())


def _build_sft_model() -> Path:
    """``dsnb.train.dpo.sft_model_path`` (imported when the SFT model is first asked for)."""
    from dsnb.train.dpo import sft_model_path

    return sft_model_path()


register_builder(TINY_SFT_NAME, _build_sft_model)

"""Training: recipes, one run path for every stage (SFT, distillation, DPO, GRPO), losses, schedules, checkpoints,
evaluation, monitoring, verifiable rewards and their sandbox (notebooks 03-08 and 12).

Importing it registers the builder of the course's SFT model (``dsnb-tiny-sft``, trained here) with
``dsnb.model.resolve``, so ``load_model("dsnb-tiny-sft")`` builds it on first use in any process that trains.
"""

from pathlib import Path

from dsnb.model.resolve import TINY_SFT_NAME, register_builder


def _build_sft_model() -> Path:
    """``dsnb.train.dpo.sft_model_path`` (imported when the SFT model is first asked for)."""
    from dsnb.train.dpo import sft_model_path

    return sft_model_path()


register_builder(TINY_SFT_NAME, _build_sft_model)

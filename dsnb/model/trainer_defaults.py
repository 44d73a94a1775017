"""The ``TrainingArguments`` every training run of the course starts from.

Pretraining the base model (``dsnb.model.pretrain``, notebook 01) and fine-tuning
(``dsnb.train.config.FinetuneConfig.training_arguments``, notebooks 03-08) pass their own values;
``course_training_arguments`` adds what they share: the CPU when there is no GPU, data loading in
the training process, line progress (``dsnb.progress.LineProgress``) instead of tqdm bars, and no
experiment tracker unless one is asked for.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import TrainingArguments

#: What every course run sets unless it says otherwise.
COURSE_DEFAULTS: dict[str, Any] = {"disable_tqdm": True, "dataloader_num_workers": 0, "report_to": "none"}


def course_training_arguments(args_class: type[TrainingArguments] = TrainingArguments, **values: Any) -> TrainingArguments:
    """``args_class(**values)`` over ``COURSE_DEFAULTS``, on the CPU when no CUDA GPU is present.

    ``args_class`` may be a subclass such as TRL's ``DPOConfig``; ``values`` override the defaults.
    """
    return args_class(**{**COURSE_DEFAULTS, "use_cpu": not torch.cuda.is_available(), **values})

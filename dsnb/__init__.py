"""dsnb — the helper package of a notebook course on fine-tuning DeepSeek-family models.

Sub-packages follow the course, so a notebook section's code is found by the section's name:

- ``dsnb.data``     corpus, records, dedup, lexical, dialogue, codeprep, imagetext, pipeline (01, 02)
- ``dsnb.model``    tokenizer, pretrain (the tiny DeepSeek-V3), load, architecture, routing, lora (01, 03)
- ``dsnb.plan``     shape, memory, activations, measure, gpus, fit, probe: will a training plan fit (00, 08)
- ``dsnb.train``    recipes, one run path for SFT / distillation / DPO, losses, checkpoints, monitoring (03-08)
- ``dsnb.compress`` GPTQ, packed 4-bit layers, pruning, students (09); ``dsnb.serve`` serving and A/B tests (10)
- ``dsnb.checklist`` the pre-flight checklist (11)
- ``dsnb.course``   runs every notebook (``make course``) and renders the claims ledger (``dsnb.ledger``);
  ``dsnb.exercises`` checks the exercises
- ``dsnb.doctor``   the environment check (``python -m dsnb.doctor``); ``dsnb.hardware_claims`` notebook 00's claims
- ``dsnb.cache``, ``dsnb.progress``, ``dsnb.values``: where things are kept, progress lines, typed values

Imports point one way: data -> model -> plan -> train -> (compress, serve) -> course; the test
suite checks it (``tests/test_layout.py``).
"""

import logging

from dsnb.cache import cache_dir

__version__ = "0.1.0"
__all__ = ["cache_dir", "__version__"]

logging.getLogger(__name__).addHandler(logging.NullHandler())


class _ExpectedCPUNotice(logging.Filter):
    """Drops DeepSpeed's "Setting accelerator to CPU" warning where torch sees no GPU either.

    DeepSpeed (imported by transformers' Trainer and TRL when it is installed) prints it on every CPU run; where
    torch does see a GPU the notice would mean something, so it is kept there.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if "Setting accelerator to CPU" not in record.getMessage():
            return True
        import torch  # already imported by DeepSpeed when it logs this

        return torch.cuda.is_available()


logging.getLogger("DeepSpeed").addFilter(_ExpectedCPUNotice())

"""dsnb — the helper package of a notebook course on fine-tuning DeepSeek-family models.

Every reusable piece of the course lives here, one module per concept:

- ``dsnb.corpus``    the course corpus built from the Python standard library (notebook 01)
- ``dsnb.tokenizer`` the byte-level BPE tokenizer and its chat template (notebook 01)
- ``dsnb.modeling``  the tiny DeepSeek-V3, its pretraining, loading any checkpoint, LoRA targets (01)
- ``dsnb.architecture`` parameters per component, MLA's cache, FLOPs, expert load (01)
- ``dsnb.routing``   DeepSeek-V3's auxiliary-loss-free expert balancing during training (01)
- ``dsnb.lora``      LoRA configs from the module tree, and the peft name-rewrite workaround (01, 03)
- ``dsnb.hardware``  the machine probe and "does this plan fit" verdicts (notebook 00)
- ``dsnb.memory``    the training-memory estimator (00)
- ``dsnb.records``, ``dedup``, ``lexical``, ``dialogue``, ``codeprep``, ``imagetext``, ``quality``:
  loading, validating, cleaning and measuring the four data dimensions (02)
- ``dsnb.progress``  readable progress lines for long work; ``dsnb.cache`` where things are kept
- ``dsnb.doctor``    the environment check (``python -m dsnb.doctor``)
- ``dsnb.course``    runs every notebook (``make course``)
"""

import logging

from dsnb.cache import cache_dir

__version__ = "0.1.0"
__all__ = ["cache_dir", "__version__"]

logging.getLogger(__name__).addHandler(logging.NullHandler())

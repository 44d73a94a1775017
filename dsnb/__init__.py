"""dsnb — the helper package of a notebook course on fine-tuning DeepSeek-family models.

Every reusable piece of the course lives here, one module per concept:

- ``dsnb.corpus``    the course corpus built from the Python standard library (notebook 01)
- ``dsnb.tokenizer`` the byte-level BPE tokenizer and its chat template (notebook 01)
- ``dsnb.modeling``  the tiny DeepSeek-V3, its pretraining, loading any checkpoint, LoRA targets (01)
- ``dsnb.doctor``    the environment check (``python -m dsnb.doctor``)
"""

import logging

from dsnb.cache import cache_dir

__version__ = "0.1.0"
__all__ = ["cache_dir", "__version__"]

logging.getLogger(__name__).addHandler(logging.NullHandler())

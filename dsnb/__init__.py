"""dsnb — the helper package of a notebook course on fine-tuning DeepSeek-family models.

Sub-packages follow the course, so a notebook section's code is found by the section's name:

- ``dsnb.data``     corpus, records, dedup, lexical, dialogue, codeprep, imagetext, pipeline (01, 02)
- ``dsnb.model``    tokenizer, pretrain (the tiny DeepSeek-V3), load, architecture, routing, lora (01, 03)
- ``dsnb.plan``     shape, memory, activations, measure, gpus, fit, probe: will a training plan fit (00, 08)
- ``dsnb.train``    config, chat data, prepare, sft, schedules, checkpoint, evaluation, speed, cli (03, 08)
- ``dsnb.course``   runs every notebook (``make course``); ``dsnb.exercises`` checks the exercises
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

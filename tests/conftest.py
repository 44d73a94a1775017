"""Shared fixtures. The base model is built once per machine (cached, file-locked)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def base_dir():
    """Directory of the pretrained course base model (built on first use: about 4.5 minutes of CPU time, `make base-model` builds it up front)."""
    from dsnb.model.pretrain import base_model_path

    return base_model_path()


@pytest.fixture(scope="session")
def tokenizer(base_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_dir)


@pytest.fixture(scope="session")
def corpus():
    from dsnb.data.corpus import course_corpus

    return course_corpus()


@pytest.fixture(scope="module")
def base(base_dir):
    """(model, tokenizer) of the base model in float32, loaded once per test module (tests may train it)."""
    import torch

    from dsnb.model.load import load_model

    return load_model(base_dir, dtype=torch.float32)

"""The guarded hot swap: a broken candidate never takes traffic, one that fails under traffic is rolled back by itself."""

from __future__ import annotations

import copy

import pytest
import torch
from fastapi.testclient import TestClient
from transformers import LlamaConfig, LlamaForCausalLM

from dsnb.serve.engine import ModelEngine, PromptTooLong
from dsnb.serve.server import create_app
from dsnb.serve.swap import GuardedEngine, SmokeTestError, smoke_test

PROMPT = "def add(a, b):"


@pytest.fixture(scope="module")
def served(base_dir):
    from dsnb.model.load import base_model

    return base_model(dtype=torch.float32)


@pytest.fixture
def engine(served):
    model, tok = served
    return ModelEngine(model, tok, "course-model", "v1")


def _small_vocab_model(vocab: int = 50) -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256))


def test_a_candidate_with_a_smaller_vocabulary_never_takes_traffic(engine):
    report = smoke_test(_small_vocab_model(), engine.tokenizer)
    assert not report.ok
    assert any(f"input embedding has 50 rows but the tokenizer has {len(engine.tokenizer)} tokens" in p
               for p in report.problems)
    guarded = GuardedEngine(engine)
    with pytest.raises(SmokeTestError, match="not swapped in .*served model is unchanged.*50 rows"):
        guarded.swap(_small_vocab_model(), "v2-small")
    assert engine.version == "v1" and guarded.watching is None
    assert guarded.generate(engine.text_ids(PROMPT), max_tokens=2).version == "v1"  # still answers


def test_a_candidate_with_nan_weights_fails_its_canary(engine, served):
    broken = copy.deepcopy(served[0])
    with torch.no_grad():
        broken.get_output_embeddings().weight.fill_(float("nan"))
    report = smoke_test(broken, engine.tokenizer)
    assert not report.ok and "logits on the canary prompt are NaN or infinite" in report.problems[0]


def test_a_sound_candidate_passes_and_is_served(engine, served):
    candidate = copy.deepcopy(served[0])
    report = smoke_test(candidate, engine.tokenizer)
    assert report.ok and isinstance(report.text, str)
    guarded = GuardedEngine(engine)
    assert guarded.swap(candidate, "v2").ok
    assert engine.version == guarded.version == "v2" and guarded.watching == "v2"
    with TestClient(create_app(guarded)) as client:  # the server takes the guarded engine as it is
        r = client.post("/v1/completions", json={"model": "course-model", "prompt": PROMPT, "max_tokens": 2,
                                                 "temperature": 0})
    assert r.status_code == 200 and r.json()["system_fingerprint"] == "v2"


def test_a_candidate_that_fails_under_traffic_is_rolled_back_automatically(engine, served):
    candidate = copy.deepcopy(served[0])
    guarded = GuardedEngine(engine, max_error_rate=0.2, min_requests=5)
    guarded.swap(candidate, "v2")
    candidate.set_input_embeddings(torch.nn.Embedding(50, candidate.config.hidden_size))  # breaks after the check
    ids = engine.text_ids(PROMPT)
    with pytest.raises(PromptTooLong):  # the client's error: not counted against the model
        guarded.generate([1] * 2000, max_tokens=2)
    failures = 0
    while guarded.version == "v2":
        with pytest.raises(IndexError):
            guarded.generate(ids, max_tokens=2)
        failures += 1
        assert failures <= 5
    assert failures == 5 and engine.version == "v1" and guarded.watching is None
    event = guarded.rollbacks[-1]
    assert (event.version, event.restored, event.requests, event.errors) == ("v2", "v1", 5, 5)
    assert "5 of 5 requests failed" in event.reason and "IndexError" in event.reason
    assert guarded.generate(ids, max_tokens=2).version == "v1"


def test_a_low_error_rate_keeps_the_candidate_and_watching_ends(engine, served):
    guarded = GuardedEngine(engine, max_error_rate=0.2, min_requests=5, watch_requests=10)
    guarded.swap(copy.deepcopy(served[0]), "v2")
    assert guarded.record(False, "v2", "one bad request") is None
    for _ in range(8):
        assert guarded.record(True, "v2") is None
    assert guarded.watching == "v2"  # 9 requests so far, 1 failed: 11% < 20%
    guarded.record(True, "v2")
    assert guarded.watching is None and engine.version == "v2" and not guarded.rollbacks
    assert guarded.record(False, "v2") is None  # after confirmation nothing is counted
    with pytest.raises(ValueError, match="max_error_rate"):
        GuardedEngine(engine, max_error_rate=1.5)

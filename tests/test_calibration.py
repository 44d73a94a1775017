"""Calibration (notebook 05): ECE and reliability bins by hand, the smoothed loss equals transformers'
LabelSmoother, and the answer-token NLL equals notebook 03's completion loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dsnb.train.calibration import (
    answer_token_predictions,
    expected_calibration_error,
    reliability_bins,
    smoothed_cross_entropy,
)


def test_ece_by_hand():
    conf = np.array([0.9, 0.9, 0.55, 0.55])
    correct = np.array([1, 0, 1, 1])
    # bins of 0.1: (0.8, 0.9] holds conf 0.9, accuracy 0.5; (0.5, 0.6] holds 0.55, accuracy 1.0
    assert expected_calibration_error(conf, correct, bins=10) == pytest.approx(0.5 * 0.4 + 0.5 * 0.45)
    rows = reliability_bins(conf, correct, bins=10)
    assert [r["count"] for r in rows] == [0, 0, 0, 0, 0, 2, 0, 0, 2, 0]
    assert rows[8]["accuracy"] == 0.5 and rows[5]["confidence"] == pytest.approx(0.55)
    with pytest.raises(ValueError, match="same shape"):
        reliability_bins(conf, correct[:2])


def test_calibrated_predictions_have_small_ece_and_overconfident_large():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0, 1, 200_000)
    right = rng.uniform(0, 1, conf.size) < conf
    assert expected_calibration_error(conf, right) < 0.01
    assert expected_calibration_error(np.sqrt(conf), right) > 0.1


@pytest.mark.parametrize("alpha", [0.0, 0.1])
def test_smoothed_loss_equals_transformers_label_smoother(alpha):
    from transformers.trainer_pt_utils import LabelSmoother

    torch.manual_seed(0)
    logits = torch.randn(2, 7, 11)
    labels = torch.randint(0, 11, (2, 7))
    labels[0, :3] = -100
    ours = smoothed_cross_entropy(logits[:, :-1], labels[:, 1:], alpha)
    theirs = LabelSmoother(epsilon=alpha)({"logits": logits}, labels, shift_labels=True)
    torch.testing.assert_close(ours, theirs)


def test_answer_token_nll_equals_completion_loss(base_dir, tokenizer, corpus):
    from transformers import AutoModelForCausalLM

    from dsnb.train.chat import build_sft_data
    from dsnb.train.evaluation import completion_loss

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    data = build_sft_data(corpus.pairs_in("validation"), tokenizer, limit=12, max_seq_len=64)
    pred = answer_token_predictions(model, tokenizer, data.examples, batch_size=5)
    ref = completion_loss(model, tokenizer, data)
    assert pred.loss == pytest.approx(ref["loss"], rel=1e-5)
    assert pred.accuracy == pytest.approx(ref["token accuracy"])
    assert ((pred.confidence > 0) & (pred.confidence <= 1)).all()

"""Bad input on the other surfaces: online learning, quantized checkpoints, record files, the checklist, recipes
and the serving command line. Each fails loudly, naming the file, field or line and what to do; nothing is
dropped without being counted."""

from __future__ import annotations

import json

import pytest
import torch

# --- online learning (notebook 10) -----------------------------------------------------------------


def _req(rid, prompt, answer, status=200):
    return {"request_id": rid, "prompt": json.dumps([{"role": "user", "content": prompt}]), "completion": answer,
            "status": status}


@pytest.mark.parametrize("feedback, match", [
    ([{"request_id": "1", "score": 1.0}, {"score": 0.0}], r"feedback row 2: missing 'request_id'"),
    ([{"request_id": "1", "score": None}], r"feedback row 1 \(request_id '1'\): 'score' is None; expected a finite"),
    ([{"request_id": "1", "score": float("nan")}], r"feedback row 1 \(request_id '1'\): 'score' is nan"),
    ([{"request_id": "1", "score": "good"}], r"'score' is 'good'"),
], ids=["no-request-id", "none-score", "nan-score", "text-score"])
def test_feedback_rows_name_the_missing_or_broken_field(feedback, match):
    from dsnb.serve.online import feedback_pairs

    with pytest.raises(ValueError, match=match):
        feedback_pairs([_req("1", "p", "good"), _req("2", "p", "bad")], feedback)


def test_request_rows_without_a_request_id_are_named():
    from dsnb.serve.online import feedback_pairs

    with pytest.raises(ValueError, match=r"request row 2: missing 'request_id'"):
        feedback_pairs([_req("1", "p", "good"), {"prompt": "p", "completion": "x", "status": 200}], [])


def test_degenerate_pairs_are_dropped_and_counted_before_the_gate(base_dir):
    from dsnb.model.load import base_model
    from dsnb.serve.online import update_from_feedback

    model, tok = base_model(dtype=torch.float32)
    good = [{"prompt": f"p{i}", "chosen": "right", "rejected": "wrong"} for i in range(3)]
    bad = [{"prompt": "p", "chosen": "same", "rejected": "same "}, {"prompt": "p", "chosen": "", "rejected": "x"},
           {"prompt": "p", "chosen": 5, "rejected": "x"}, {"prompt": "p", "chosen": "x"}]
    candidate, rnd = update_from_feedback(model, tok, good + bad, ["q"], ["a"], min_pairs=4)
    assert candidate is None and not rnd.trained and rnd.pairs == 3
    assert rnd.dropped == {"'chosen' and 'rejected' are the same text": 1, "field 'chosen' is empty": 1,
                           "field 'chosen' should be str, got int": 1, "missing required field 'rejected'": 1}
    assert "only 3 usable feedback pairs (4 dropped: " in rnd.reason and "the minimum is 4" in rnd.reason


def test_an_empty_heldout_set_is_refused_before_training(base_dir):
    from dsnb.model.load import base_model
    from dsnb.serve.online import heldout_score, update_from_feedback

    model, tok = base_model(dtype=torch.float32)
    pairs = [{"prompt": f"p{i}", "chosen": "right", "rejected": "wrong"} for i in range(2)]
    with pytest.raises(ValueError, match=r"heldout_prompts \(0\) and heldout_references \(0\): the gate needs"):
        update_from_feedback(model, tok, pairs, [], [], min_pairs=2)
    with pytest.raises(ValueError, match=r"heldout_prompts \(2\) and heldout_references \(1\)"):
        heldout_score(model, tok, ["a", "b"], ["x"])

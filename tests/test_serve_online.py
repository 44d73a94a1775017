"""Online learning: feedback -> preference pairs -> a gated DPO round that never touches the served model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dsnb.serve.online import false_accept_rate, feedback_pairs, gate, update_from_feedback, user_prompt


def _req(rid, prompt, answer, status=200):
    return {"request_id": rid, "prompt": json.dumps([{"role": "user", "content": prompt}]), "completion": answer,
            "status": status}


def test_feedback_pairs_take_the_liked_and_the_disliked_answer_per_prompt():
    requests = [_req("1", "p1", "good"), _req("2", "p1", "bad"), _req("3", "p1", "good"), _req("4", "p2", "only"),
                _req("5", "p3", "x"), _req("6", "p3", "y"), _req("7", "p1", "err", status=500)]
    feedback = [{"request_id": "1", "score": 1.0}, {"request_id": "2", "score": 0.0}, {"request_id": "3", "score": 1.0},
                {"request_id": "4", "score": 1.0}, {"request_id": "5", "score": 0.6}, {"request_id": "6", "score": 0.4},
                {"request_id": "7", "score": 1.0}, {"request_id": "unknown", "score": 1.0}]
    pairs = feedback_pairs(requests, feedback)
    assert pairs == [{"prompt": "p1", "chosen": "good", "rejected": "bad", "kind": "feedback"}]  # p3's gap is 0.2
    assert len(feedback_pairs(requests, feedback, min_gap=0.1)) == 2
    assert user_prompt("plain text") == "plain text"


def test_too_few_pairs_do_not_train(base_dir):
    from dsnb.model.load import base_model

    model, tok = base_model(dtype=torch.float32)
    candidate, rnd = update_from_feedback(model, tok, [{"prompt": "p", "chosen": "a", "rejected": "b"}], [], [],
                                          min_pairs=16)
    assert candidate is None and not rnd.trained and "minimum is 16" in rnd.reason


@pytest.mark.parametrize(("tolerance", "accepted"), [(1.0, True), (-1.0, False)])
def test_a_round_trains_a_copy_and_the_gate_decides(base_dir, corpus, tolerance, accepted):
    from dsnb.data.corpus import SUMMARY_PROMPT
    from dsnb.data.preference import build_pairs
    from dsnb.model.load import base_model

    model, tok = base_model(dtype=torch.float32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pairs = build_pairs(corpus.pairs_in("train")[:8], ("other_summary",))
    held = corpus.pairs_in("validation")[:4]
    candidate, rnd = update_from_feedback(model, tok, pairs, [SUMMARY_PROMPT + p.signature for p in held],
                                          [p.summary for p in held], min_pairs=8, max_steps=1, tolerance=tolerance)
    assert rnd.trained and rnd.accepted is accepted and rnd.pairs == 8
    assert len(rnd.served_scores) == len(rnd.candidate_scores) == len(held)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the served model is untouched
    if accepted:
        after = candidate.state_dict()
        assert set(after) == set(before)  # LoRA merged back: same parameter names as the served model
        assert any(not torch.equal(before[k], after[k]) for k in before)
        assert "swap it in" in rnd.reason and rnd.comparison.unit == "prompts" and rnd.comparison.pairs == len(held)
    else:
        assert candidate is None and "keep the served model" in rnd.reason


def _from(user, rid, prompt, answer):
    return {**_req(rid, prompt, answer), "user_id": user}


def test_one_user_cannot_steer_the_pairs(caplog):
    """Three honest users like "good" and dislike "bad"; mallory scores 50 of her own "bad" answers 1 and a "good"
    one 0, and scores honest users' requests too. One user, one vote per answer: the pair still prefers "good"."""
    requests = ([_from(f"h{i}", f"g{i}", "p1", "good") for i in range(3)]
                + [_from(f"h{i}", f"b{i}", "p1", "bad") for i in range(3)]
                + [_from("mallory", f"m{i}", "p1", "bad") for i in range(50)] + [_from("mallory", "mg", "p1", "good")])
    feedback = ([{"request_id": f"g{i}", "user_id": f"h{i}", "score": 1.0} for i in range(3)]
                + [{"request_id": f"b{i}", "user_id": f"h{i}", "score": 0.0} for i in range(3)]
                + [{"request_id": f"m{i}", "user_id": "mallory", "score": 1.0} for i in range(50)]
                + [{"request_id": "mg", "user_id": "mallory", "score": 0.0}]
                + [{"request_id": f"g{i}", "user_id": "mallory", "score": 0.0} for i in range(3)])  # not her requests
    with caplog.at_level("WARNING", logger="dsnb.serve.online"):
        pairs = feedback_pairs(requests, feedback)
    assert pairs == [{"prompt": "p1", "chosen": "good", "rejected": "bad", "kind": "feedback"}]
    assert "3 feedback rows on another user's request" in caplog.text


def test_a_user_contributes_to_at_most_max_per_user_answers_a_round(caplog):
    requests = [_from("mallory", f"{k}{i}", f"q{i}", f"{k}-answer-{i}") for i in range(10) for k in ("a", "b")]
    feedback = [{"request_id": f"{k}{i}", "user_id": "mallory", "score": float(k == "a")}
                for i in range(10) for k in ("a", "b")]
    assert len(feedback_pairs(requests, feedback, max_per_user=None)) == 10
    with caplog.at_level("WARNING", logger="dsnb.serve.online"):
        capped = feedback_pairs(requests, feedback, max_per_user=4)
    assert [p["prompt"] for p in capped] == ["q0", "q1"]  # her first four answers: two prompts' worth
    assert "16 feedback rows over the cap of 4 answers per user" in caplog.text


def test_the_gate_needs_a_gain_the_prompts_show_not_a_higher_mean_once():
    rng = np.random.default_rng(0)
    served = rng.uniform(0, 0.4, 32)
    swing = np.resize([0.08, -0.08], 32)
    slightly = list(served + 0.006 + swing)  # a gain of 0.006 where prompts swing by 0.08 either way
    clearly = list(served + 0.1 + swing / 2)
    assert sum(slightly) > sum(served)  # the old rule ("not lower") would have swapped it in
    assert not gate(slightly, list(served))[0] and gate(slightly, list(served))[1].label == "within noise"
    assert gate(clearly, list(served))[0] and gate(clearly, list(served))[1].label == "better"
    assert gate(slightly, list(served), tolerance=0.1)[0]  # non-inferiority: at most 0.1 worse is accepted


def test_false_accept_rate_of_a_candidate_that_is_no_better():
    rng = np.random.default_rng(1)
    served = list(rng.uniform(0, 0.4, 32))
    candidate = [s + d for s, d in zip(served, rng.normal(0.0, 0.08, 32), strict=True)]
    rates = false_accept_rate(candidate, served, draws=1000)
    assert rates["paired gate"] <= 0.05  # one-sided at 95% two-sided: about 2.5%
    assert 0.35 <= rates["mean is not lower"] <= 0.65  # the plain rule passes about half of them

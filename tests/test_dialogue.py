"""Dialogue generation, intent classifier, response scoring and distinct-n (dsnb.data.dialogue)."""

from __future__ import annotations

import pytest

from dsnb.data import dialogue
from dsnb.data.corpus import InstructionPair


def _pairs() -> list[InstructionPair]:
    rows = [("os.path", "join", "Join two or more pathname components."),
            ("os.path", "isabs", "Test whether a path is absolute."),
            ("json", "dumps", "Serialize obj to a JSON formatted str."),
            ("json", "loads", "Deserialize a str instance containing a JSON document."),
            ("hashlib", "new", "Return a new hashing object using the named algorithm."),
            ("shutil", "copyfile", "Copy data from src to dst in the most efficient way possible.")]
    return [InstructionPair(m, "train", f"{m}.{n}", f"def {n}(a, b):", s, "") for m, n, s in rows]


def test_distinct_n_hand_made():
    texts = ["the cat sat", "the cat ran"]
    # unigrams: the cat sat the cat ran -> 4 distinct / 6; bigrams: the-cat x2, cat-sat, cat-ran -> 3 / 4
    assert dialogue.distinct_n(texts, 1) == pytest.approx(4 / 6)
    assert dialogue.distinct_n(texts, 2) == pytest.approx(3 / 4)
    assert dialogue.distinct_n(["Hello, world!"], 1) == 1.0  # punctuation is not counted
    assert dialogue.distinct_n([], 2) == 0.0
    assert dialogue.batch_distinct_n(["a b", "a b", "c d", "e f"], 1, batch=2) == pytest.approx((0.5 + 1.0) / 2)


def test_diversity_filter_reaches_its_threshold():
    texts = [f"how do I {v} the file" for v in ("open", "read", "close", "copy", "move")] + [
        "what is the difference between alpha and beta", "explain gamma delta epsilon zeta"]
    kept = dialogue.diversity_filter(texts, min_novel=0.7, window=16)
    kq = [texts[i] for i in kept]
    assert len(kept) < len(texts)
    assert dialogue.distinct_n(kq, 1) > 0.7 and dialogue.distinct_n(kq, 2) > 0.7
    assert dialogue.diversity_filter(texts, min_novel=0.7, window=16) == kept  # seeded


def test_generation_is_seeded_and_labelled():
    a = dialogue.generate_dialogues(_pairs(), 50, seed=3)
    assert a == dialogue.generate_dialogues(_pairs(), 50, seed=3)
    assert {d.intent for d in a} == set(dialogue.INTENTS)
    assert all(d.messages()[1]["role"] == "assistant" for d in a)
    with pytest.raises(ValueError, match="instruction pairs"):
        dialogue.generate_dialogues([], 5)


def test_intent_classifier_learns_the_intents():
    dials = dialogue.generate_dialogues(_pairs(), 600, seed=0)
    res = dialogue.train_intent_classifier(dials, seed=0)
    assert res.accuracy > 0.9
    assert res.n_train + res.n_test == 600
    cm = dialogue.confusion_matrix(res)
    assert sum(map(sum, cm)) == res.n_test
    assert sum(cm[i][i] for i in range(len(cm))) / res.n_test == pytest.approx(res.accuracy)
    assert res.predict("What is the difference between json and pickle?") == "compare"


def test_score_response_components():
    ref = "Test whether a path is absolute."
    good = "isabs (os.path): Test whether a path is absolute. Its signature is isabs(s)."
    assert dialogue.token_f1(ref, ref) == 1.0
    assert dialogue.score_response(good, ref, "isabs") > 0.7
    # generic answer: no overlap with the reference, short, off topic
    assert dialogue.score_response("It depends.", ref, "isabs") == pytest.approx(0.25 * 2 / 8)
    # wrong function: on length but not on topic and little overlap
    assert dialogue.score_response("dumps (json): Serialize obj to a JSON formatted str.", ref, "isabs") < 0.5


def test_scorer_finds_injected_bad_responses():
    dials = dialogue.generate_dialogues(_pairs(), 400, seed=1, corrupt_rate=0.2)
    flagged = {i for i, d in enumerate(dials) if dialogue.score_response(d.response, d.reference, d.name) < 0.5}
    bad = {i for i, d in enumerate(dials) if d.corrupted}
    assert bad and len(flagged & bad) / len(bad) > 0.9 and len(flagged & bad) / len(flagged) > 0.9


def test_lm_loss_per_token_equals_manual_cross_entropy(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from dsnb.model.load import save_tiny_random
    from dsnb.model.tokenizer import train_tokenizer

    tok = train_tokenizer(["def f(x):\n    return x + 1\n", "Return the size of a file."] * 20, vocab_size=300)
    model = AutoModelForCausalLM.from_pretrained(save_tiny_random("llama", tmp_path / "m", tokenizer=tok))
    texts = ["Return the size of a file.", "x"]
    losses = dialogue.lm_loss_per_token(texts, model, tok)
    ids = tok(texts[0], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1]
    manual = torch.nn.functional.cross_entropy(logits, ids[0, 1:]).item()
    assert losses[0] == pytest.approx(manual, rel=1e-5)
    assert len(losses) == 2

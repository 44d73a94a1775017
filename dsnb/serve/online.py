"""Online learning from feedback, with guard rails: feedback -> preference pairs -> a short DPO round -> gate (notebook 10).

The article updates the model "in real time" from user feedback. Changing weights on every request
would let one user (or one bot) steer the model and would make every answer come from a different
model, so an A/B test could not attribute anything. The safe form is periodic:

1. ``feedback_pairs``: for each prompt that got both a liked and a disliked answer, the liked one is
   ``chosen`` and the disliked one ``rejected`` (a gap of at least ``min_gap`` in score); feedback
   counts only from the request's own user, one vote per user and answer, for at most
   ``max_per_user`` answers per user and round;
2. ``update_from_feedback``: nothing happens below ``min_pairs`` pairs; otherwise a short DPO run
   with LoRA (``dsnb.train.dpo``) on a copy of the served model, merged into its weights;
3. the gate (``gate``): both models answer the same held-out prompts, and the per-prompt token-F1
   differences are compared with the course's paired rule (``dsnb.train.compare``): the candidate
   passes when the lower end of the 95% interval of its mean gain is above ``-tolerance`` (with the
   default 0: when it is shown better, not when it merely scored higher once). Only then does the
   caller swap it in (``ModelEngine.swap``), and ``ModelEngine.rollback`` undoes it.
   ``false_accept_rate`` measures how often a gate passes a candidate that is no better.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from dsnb.data.preference import preference_dataset, token_f1
from dsnb.data.records import validate_record
from dsnb.train.compare import Comparison, compare_seeds
from dsnb.train.config import FinetuneConfig
from dsnb.train.dpo import build_dpo_trainer
from dsnb.train.evaluation import generate_answers

logger = logging.getLogger(__name__)


def user_prompt(stored: str) -> str:
    """The last user message of a stored chat prompt (the gateway stores the messages as JSON), or the text."""
    try:
        messages = json.loads(stored)
    except (TypeError, ValueError):
        return stored
    if isinstance(messages, list):
        users = [m.get("content", "") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        if users:
            return users[-1]
    return stored


def _checked_rows(rows: Iterable[Mapping[str, Any]], what: str, numeric: tuple[str, ...] = ()) -> list[Mapping[str, Any]]:
    """``rows`` as a list, each with a ``request_id`` and a finite number in each ``numeric`` field; else a
    ``ValueError`` naming the row and the field (the event store never writes such rows: they come from elsewhere)."""
    out = list(rows)
    for i, row in enumerate(out, start=1):
        if not isinstance(row, Mapping) or row.get("request_id") is None:
            raise ValueError(f"{what} row {i}: missing 'request_id' ({row!r:.80}); each row needs the request_id "
                             "the gateway returned (read the rows with the event store's reads)")
        for name in numeric:
            value = row.get(name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"{what} row {i} (request_id {row['request_id']!r}): {name!r} is {value!r}; "
                                 "expected a finite number (e.g. 1.0 liked, 0.0 disliked)")
    return out


#: The most answers one user's feedback counts for in one round (``feedback_pairs``).
MAX_FEEDBACK_PER_USER = 20


def feedback_pairs(requests: Iterable[Mapping[str, Any]], feedback: Iterable[Mapping[str, Any]],
                   min_gap: float = 0.5, max_per_user: int | None = MAX_FEEDBACK_PER_USER) -> list[dict[str, str]]:
    """Preference pairs (prompt, chosen, rejected) from request rows and feedback rows of the event store.

    Per prompt, the best and the worst answer make a pair when they differ in text and in mean score
    by at least ``min_gap``. One user cannot steer a round (claim C27): a feedback row whose
    ``user_id`` is not the request's user is ignored (the gateway already refuses such feedback);
    one user's scores for one answer count as one vote (their mean), and an answer's score is the
    mean of its users' votes; each user's votes count for at most ``max_per_user`` answers a round
    (their first ones; None: no cap). Rows without user ids count one vote each. Ignored rows are
    counted in a logged warning.
    """
    requests, feedback = _checked_rows(requests, "request"), _checked_rows(feedback, "feedback", ("score",))
    by_id = {r["request_id"]: r for r in requests if r.get("status") == 200 and r.get("completion") is not None}
    votes: dict[tuple[Any, str, str], list[float]] = {}  # (user, prompt, answer) -> that user's scores
    counted: dict[Any, set[tuple[str, str]]] = {}  # user -> the answers their votes count for
    ignored: Counter[str] = Counter()
    for i, f in enumerate(feedback):
        r = by_id.get(f["request_id"])
        if r is None:
            continue
        user, owner = f.get("user_id"), r.get("user_id")
        if user is not None and owner is not None and user != owner:
            ignored["on another user's request"] += 1
            continue
        voter = user if user is not None else owner if owner is not None else ("row", i)
        item = (user_prompt(r["prompt"]), r["completion"].strip())
        mine = counted.setdefault(voter, set())
        if item not in mine:
            if max_per_user is not None and len(mine) >= max_per_user:
                ignored[f"over the cap of {max_per_user} answers per user"] += 1
                continue
            mine.add(item)
        votes.setdefault((voter, *item), []).append(f["score"])
    if ignored:
        logger.warning("feedback_pairs ignored %s", "; ".join(f"{n} feedback rows {why}" for why, n in ignored.items()))
    scores: dict[str, dict[str, list[float]]] = {}
    for (_, prompt, answer), s in votes.items():
        scores.setdefault(prompt, {}).setdefault(answer, []).append(sum(s) / len(s))
    pairs = []
    for prompt, answers in sorted(scores.items()):
        mean = sorted(((sum(s) / len(s), a) for a, s in answers.items()), reverse=True)
        (best, chosen), (worst, rejected) = mean[0], mean[-1]
        if chosen != rejected and best - worst >= min_gap:
            pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "kind": "feedback"})
    return pairs


def heldout_scores(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str],
                   references: list[str], max_new_tokens: int = 24) -> list[float]:
    """Token-F1 of the model's greedy answer to each of ``prompts`` against its reference (the gate's judge)."""
    _check_heldout(prompts, references)
    conversations = [[{"role": "user", "content": p}, {"role": "assistant", "content": ""}] for p in prompts]
    answers = generate_answers(model, tokenizer, conversations, max_new_tokens)
    return [token_f1(a, r) for a, r in zip(answers, references, strict=True)]


def heldout_score(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str],
                  references: list[str], max_new_tokens: int = 24) -> float:
    """Mean token-F1 over ``prompts`` (``heldout_scores``)."""
    scores = heldout_scores(model, tokenizer, prompts, references, max_new_tokens)
    return sum(scores) / len(scores)


def gate(candidate: list[float], served: list[float], tolerance: float = 0.0, confidence: float = 0.95
         ) -> tuple[bool, Comparison]:
    """(passes, comparison) for per-prompt scores of the candidate and the served model on the same prompts.

    The candidate passes when the ``confidence`` interval's lower end of its mean per-prompt gain is
    above ``-tolerance``: with ``tolerance=0`` it must be shown better; a positive tolerance accepts a
    candidate shown to be at most that much worse (non-inferiority).
    """
    comparison = compare_seeds(candidate, served, lower_is_better=False, confidence=confidence, unit="prompts")
    return bool(comparison.ci_low > -tolerance), comparison


def false_accept_rate(candidate: list[float], served: list[float], tolerance: float = 0.0,
                      confidence: float = 0.95, draws: int = 2000, seed: int = 0) -> dict[str, float]:
    """How often a gate passes a candidate that is no better, for the paired gate and the plain "scored higher" rule.

    Null candidates are made from the measured per-prompt differences by flipping each one's sign at
    random (a model no better than the served one is as likely to win a prompt by d as to lose it by d),
    so the spread is the real one. Returns the share of draws each rule accepts.
    """
    rng = np.random.default_rng(seed)
    diff = np.asarray(candidate, dtype=float) - np.asarray(served, dtype=float)
    base = np.asarray(served, dtype=float)
    paired = plain = 0
    for _ in range(draws):
        null = diff * rng.choice((-1.0, 1.0), size=len(diff))
        paired += gate(list(base + null), list(base), tolerance, confidence)[0]
        plain += bool(null.mean() >= -tolerance)
    return {"paired gate": paired / draws, "mean is not lower": plain / draws}


def _check_heldout(prompts: list[str], references: list[str]) -> None:
    if not prompts or len(prompts) != len(references):
        raise ValueError(f"heldout_prompts ({len(prompts)}) and heldout_references ({len(references)}): the gate "
                         "needs at least one held-out prompt with one reference answer each")


def usable_pairs(pairs: Iterable[Any]) -> tuple[list[dict[str, str]], dict[str, int]]:
    """The pairs fit to train on, and how many were dropped for each reason.

    A pair is dropped when ``dsnb.data.records.validate_record`` finds a problem with it as a
    ``preference`` record: a missing or non-text ``prompt`` / ``chosen`` / ``rejected``, an empty one,
    or ``chosen`` equal to ``rejected`` (nothing to prefer). Each reason names the field.
    """
    good: list[dict[str, str]] = []
    dropped: Counter[str] = Counter()
    for pair in pairs:
        problems = validate_record(pair, "preference")
        if problems:
            dropped.update(problems)
        else:
            good.append(pair)
    return good, dict(dropped)


@dataclass
class OnlineRound:
    """What one online-learning round did and why."""

    pairs: int
    trained: bool
    accepted: bool
    reason: str
    served_score: float | None = None
    candidate_score: float | None = None
    comparison: Comparison | None = None  # the gate's paired comparison over the held-out prompts
    served_scores: list[float] = field(default_factory=list)  # per held-out prompt, for ``false_accept_rate``
    candidate_scores: list[float] = field(default_factory=list)
    train_loss: float | None = None
    seconds: float = 0.0
    dropped: dict[str, int] = field(default_factory=dict)  # pairs left out, by reason (``usable_pairs``)


def update_from_feedback(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, pairs: list[dict[str, str]],
                         heldout_prompts: list[str], heldout_references: list[str], min_pairs: int = 16,
                         max_steps: int = 10, learning_rate: float = 5e-3, beta: float = 0.1, tolerance: float = 0.0,
                         seed: int = 0) -> tuple[PreTrainedModel | None, OnlineRound]:
    """One gated round: DPO with LoRA on ``pairs`` (a copy of ``model``), merged; the candidate if it passes.

    Returns ``(candidate, round)``; ``candidate`` is None when there were too few pairs or the gate
    rejected it. ``model`` itself is never changed. Degenerate pairs (``usable_pairs``) are left out and
    counted in ``round.dropped``; ``round.pairs`` is the number trained on.
    """
    t0 = time.perf_counter()
    pairs, dropped = usable_pairs(pairs)
    left_out = ""
    if dropped:
        left_out = f" ({sum(dropped.values())} dropped: " + "; ".join(f"{n}× {why}" for why, n in dropped.items()) + ")"
        logger.warning("feedback pairs dropped before training:%s", left_out)
    if len(pairs) < min_pairs:
        return None, OnlineRound(len(pairs), False, False, f"only {len(pairs)} usable feedback pairs{left_out}; the "
                                 f"minimum is {min_pairs}", dropped=dropped)
    _check_heldout(heldout_prompts, heldout_references)
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory(prefix="dsnb-online-") as out:
        cfg = FinetuneConfig(stage="dpo", method="lora", lora_r=16, lora_alpha=32, beta=beta, max_seq_len=128,
                             max_steps=max_steps, per_device_batch_size=8, learning_rate=learning_rate,
                             min_learning_rate=learning_rate / 10, warmup_steps=0, eval_steps=None, save_steps=None,
                             logging_steps=max_steps, output_dir=out, seed=seed)
        trainer = build_dpo_trainer(cfg, copy.deepcopy(model), tokenizer, preference_dataset(pairs), progress=False)
        with warnings.catch_warnings():  # peft reads model.is_gradient_checkpointing, renamed in transformers 5
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            loss = trainer.train().training_loss
    candidate = trainer.model.merge_and_unload().eval()
    served = heldout_scores(model, tokenizer, heldout_prompts, heldout_references)
    new = heldout_scores(candidate, tokenizer, heldout_prompts, heldout_references)
    accepted, comparison = gate(new, served, tolerance)
    need = "shown better" if tolerance == 0 else f"shown at most {tolerance:g} worse"
    reason = (f"held-out token-F1 {sum(new) / len(new):.3f} vs {sum(served) / len(served):.3f} served, gain "
              f"{comparison.describe()}: " + (f"{need}, swap it in" if accepted else f"not {need}, keep the served "
                                               "model") + left_out)
    return (candidate if accepted else None), OnlineRound(len(pairs), True, accepted, reason, sum(served) / len(served),
                                                          sum(new) / len(new), comparison, served, new, loss,
                                                          time.perf_counter() - t0, dropped)

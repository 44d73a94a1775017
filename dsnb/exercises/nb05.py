"""Exercise checks and worked solutions for notebook 05 (curriculum, adversarial training, label smoothing,
augmentation).

Expected values are computed by dsnb (the FGSM step, the curriculum's stage bounds, the smoothed loss);
the questions move the notebook's settings to a real model, so the page does not print their answers.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch

from dsnb.exercises import Solutions, check_choice, check_number
from dsnb.train.adversarial import fgsm_delta
from dsnb.train.calibration import smoothed_cross_entropy
from dsnb.train.curriculum import scaled_thresholds

SOLUTIONS = Solutions("05")
solution = SOLUTIONS.show

#: Exercise 1: DeepSeek-V3's hidden size and the article's epsilon.
EX1_HIDDEN, EX1_EPSILON = 7168, 0.01
#: Exercise 2: the context length of the recipe asked about.
EX2_SEQ_LEN = 512
#: Exercise 3: DeepSeek-V3's vocabulary and the article's smoothing.
EX3_VOCAB, EX3_ALPHA = 129_280, 0.1


def expected_fgsm_norm(hidden: int = EX1_HIDDEN, epsilon: float = EX1_EPSILON) -> float:
    """L2 norm of one token's FGSM perturbation (any gradient with no zero coordinate)."""
    grad = torch.linspace(-1, 1, hidden + 1, dtype=torch.float64)[:-1] + 1e-3
    return float(fgsm_delta(grad[None, None], epsilon).norm())


def check_fgsm_norm(answer: float | None) -> bool:
    """Exercise 1: how far (L2) FGSM with epsilon 0.01 moves one token embedding of DeepSeek-V3."""
    return check_number("1 (FGSM perturbation norm)", answer, expected_fgsm_norm(), rel_tol=0.01,
                        hint="every coordinate moves by exactly epsilon; how long is a vector of 7,168 such steps?")


@SOLUTIONS.register(1)
def _solution_1() -> str:
    return f"""
FGSM moves every coordinate by ±ε, so one token's perturbation has L2 norm ε·√d:
  {EX1_EPSILON} × √{EX1_HIDDEN} = {expected_fgsm_norm():.4f}
FGM with the same ε moves a whole sequence by ε in L2 — about √(d·tokens) times less per coordinate.
"""


def expected_bounds(max_seq_len: int = EX2_SEQ_LEN) -> tuple[int, ...]:
    """The discrete curriculum's stage bounds dsnb uses at ``max_seq_len``."""
    return scaled_thresholds(max_seq_len)


def _ints(value: Any) -> tuple[int, ...]:
    if isinstance(value, str):
        value = re.findall(r"\d+", value)
    return tuple(int(v) for v in value)


def check_stage_bounds(answer: Any) -> bool:
    """Exercise 2: the stage bounds of ``curriculum: discrete`` in a recipe with ``max_seq_len: 512``."""
    return check_choice("2 (curriculum stage bounds)", answer, expected_bounds(), normalize=_ints,
                        hint="the article's 512 and 1024 are for a 2,048-token context; dsnb keeps the proportions.")


@SOLUTIONS.register(2)
def _solution_2() -> str:
    return f"""
dsnb scales the article's bounds (512, 1024 of a 2,048-token context) to the recipe's context:
  512 × {EX2_SEQ_LEN}/2048, 1024 × {EX2_SEQ_LEN}/2048 = {expected_bounds()}
(dsnb.train.curriculum.scaled_thresholds({EX2_SEQ_LEN})). A recipe with max_seq_len 2048 gets 512 and 1024.
"""


def expected_smoothing_floor(vocab: int = EX3_VOCAB, alpha: float = EX3_ALPHA) -> float:
    """The lowest label-smoothed loss any model can reach: the smoothed target's own entropy."""
    target = torch.full((vocab,), alpha / vocab, dtype=torch.float64)
    target[0] += 1 - alpha
    logits = target.log()[None]  # the best prediction is the smoothed target itself
    return float(smoothed_cross_entropy(logits, torch.zeros(1, dtype=torch.long), alpha))


def check_smoothing_floor(answer: float | None) -> bool:
    """Exercise 3: the lowest training loss the Trainer can log for DeepSeek-V3 with label smoothing 0.1."""
    return check_number("3 (smoothed loss floor)", answer, expected_smoothing_floor(), rel_tol=0.01,
                        hint="the best a model can do is predict the smoothed target; its loss is then that "
                             "target's entropy.")


@SOLUTIONS.register(3)
def _solution_3() -> str:
    q, v, a = 1 - EX3_ALPHA + EX3_ALPHA / EX3_VOCAB, EX3_VOCAB, EX3_ALPHA
    by_hand = -q * math.log(q) - (v - 1) * (a / v) * math.log(a / v)
    return f"""
The smoothed loss is the cross-entropy with the target q = (1 − α)·one-hot + α/V; it is lowest when the
model predicts q itself, and is then q's entropy:
  −q_y ln q_y − (V − 1)·(α/V)·ln(α/V) = {by_hand:.4f} nats   (q_y = 1 − α + α/V, V = {v:,})
dsnb.train.calibration.smoothed_cross_entropy gives {expected_smoothing_floor():.4f}. A logged loss of 1.5 is
therefore a perfect model, not a bad one: compute perplexity from the NLL, never from the smoothed loss.
"""

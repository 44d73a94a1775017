"""Exercise checks and worked solutions for notebook 05 (curriculum, adversarial training, label smoothing,
augmentation).

Expected values are computed by dsnb (the FGSM step, the curriculum's stage bounds, the smoothed loss);
the questions move the notebook's settings to other models and data (another hidden size and embedding
scale, another training set, another vocabulary and smoothing), so the page does not print their answers.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch

from dsnb.exercises import Solutions, check_choice, check_number
from dsnb.train.adversarial import fgsm_delta
from dsnb.train.calibration import smoothed_cross_entropy
from dsnb.train.curriculum import QUANTILE_STAGES, CurriculumSchedule

SOLUTIONS = Solutions("05")
solution = SOLUTIONS.show

#: Exercise 1: a model's hidden size, the typical L2 norm of its token embeddings, and the share of that
#: norm one FGSM step should move a token by.
EX1_HIDDEN, EX1_EMBEDDING_NORM, EX1_SHARE = 4096, 0.95, 0.04
#: Exercise 2: token lengths of a small training set (a recipe with ``curriculum: discrete``).
EX2_LENGTHS = (210, 48, 75, 1310, 96, 388, 57, 640, 152, 33, 905, 121)
#: Exercise 3: deepseek-llm-7b's vocabulary and the smoothing in the recipe asked about.
EX3_VOCAB, EX3_ALPHA = 102_400, 0.2


def fgsm_step_norm(hidden: int, epsilon: float) -> float:
    """L2 norm of one token's FGSM perturbation (dsnb's ``fgsm_delta`` on a gradient with no zero coordinate)."""
    grad = torch.linspace(-1, 1, hidden + 1, dtype=torch.float64)[:-1] + 1e-3
    return float(fgsm_delta(grad[None, None], epsilon).norm())


def expected_epsilon(hidden: int = EX1_HIDDEN, norm: float = EX1_EMBEDDING_NORM, share: float = EX1_SHARE) -> float:
    """The FGSM epsilon that moves one token embedding by ``share`` of its L2 ``norm``: the step is ε·√hidden."""
    per_unit = fgsm_step_norm(hidden, 1.0)  # the step's L2 norm at epsilon 1
    return share * norm / per_unit


def check_epsilon(answer: float | None) -> bool:
    """Exercise 1: the epsilon that moves a token embedding of the EX1_* model by EX1_SHARE of its norm."""
    return check_number("1 (FGSM epsilon for a target step)", answer, expected_epsilon(), rel_tol=0.02,
                        hint="FGSM moves every coordinate by ±ε, so one token moves by ε times the length of a vector "
                             "of ones of the hidden size; set that equal to the share of the embedding's norm.")


@SOLUTIONS.register(1)
def _solution_1() -> str:
    eps = expected_epsilon()
    return f"""
FGSM moves every coordinate by ±ε, so one token's step has L2 norm ε·√d. Asking for {EX1_SHARE:.0%} of a
norm of {EX1_EMBEDDING_NORM}:
  ε·√{EX1_HIDDEN} = {EX1_SHARE} × {EX1_EMBEDDING_NORM}  →  ε = {EX1_SHARE * EX1_EMBEDDING_NORM:.4g} / {math.sqrt(EX1_HIDDEN):g} = {eps:.4g}
Check: fgsm_delta with that ε moves a token by {fgsm_step_norm(EX1_HIDDEN, eps):.4f}. Since a token's norm is
itself (RMS per coordinate)·√d, the share is just ε / RMS: ε is a fraction of the per-coordinate scale,
whatever the hidden size. The article's ε = 0.01 means a very different push on different models.
"""


def expected_stage_bounds(lengths: tuple[int, ...] = EX2_LENGTHS) -> tuple[int, ...]:
    """The stage bounds ``curriculum: discrete`` uses on a training set of these lengths (dsnb's quantile stages)."""
    schedule = CurriculumSchedule("discrete", QUANTILE_STAGES, (1,) * len(QUANTILE_STAGES), quantiles=True)
    return tuple(int(t) for t in schedule.on_data(lengths).thresholds)


def _ints(value: Any) -> tuple[int, ...]:
    if isinstance(value, str):
        value = re.findall(r"\d+", value)
    return tuple(int(v) for v in value)


def check_stage_bounds(answer: Any) -> bool:
    """Exercise 2: the stage bounds a recipe with ``curriculum: discrete`` gets on EX2_LENGTHS."""
    return check_choice("2 (curriculum stage bounds)", answer, expected_stage_bounds(), normalize=_ints,
                        hint="a recipe's stages split the training set into thirds by length: each bound is the "
                             "length of the example that closes a third, counting from the shortest.")


@SOLUTIONS.register(2)
def _solution_2() -> str:
    ordered = sorted(EX2_LENGTHS)
    n = len(ordered)
    picks = [math.ceil(q * n) for q in QUANTILE_STAGES]
    return f"""
A recipe's curriculum splits the training examples into thirds by length (QUANTILE_STAGES), so sort them:
  {ordered}
The first third ends at example {picks[0]} of {n}, the second at example {picks[1]}: bounds {expected_stage_bounds()}
(CurriculumSchedule(..., quantiles=True).on_data(lengths)). The article's 512 / 1024 would put
{sum(x <= 512 for x in ordered)} of {n} examples in the first stage and {sum(x > 1024 for x in ordered)} in the last: fixed
token bounds suit some data sets and starve others.
"""


def expected_smoothing_floor(vocab: int = EX3_VOCAB, alpha: float = EX3_ALPHA) -> float:
    """The lowest label-smoothed loss any model can reach: the smoothed target's own entropy."""
    target = torch.full((vocab,), alpha / vocab, dtype=torch.float64)
    target[0] += 1 - alpha
    logits = target.log()[None]  # the best prediction is the smoothed target itself
    return float(smoothed_cross_entropy(logits, torch.zeros(1, dtype=torch.long), alpha))


def check_smoothing_floor(answer: float | None) -> bool:
    """Exercise 3: the lowest training loss the Trainer can log for the EX3_* recipe (three significant figures)."""
    return check_number("3 (smoothed loss floor)", answer, expected_smoothing_floor(), rel_tol=0.002,
                        hint="the best a model can do is predict the smoothed target; its loss is then that "
                             "target's entropy (the right token gets 1 − α + α/V, every other token α/V).")


@SOLUTIONS.register(3)
def _solution_3() -> str:
    q, v, a = 1 - EX3_ALPHA + EX3_ALPHA / EX3_VOCAB, EX3_VOCAB, EX3_ALPHA
    by_hand = -q * math.log(q) - (v - 1) * (a / v) * math.log(a / v)
    return f"""
The smoothed loss is the cross-entropy with the target q = (1 − α)·one-hot + α/V; it is lowest when the
model predicts q itself, and is then q's entropy:
  −q_y ln q_y − (V − 1)·(α/V)·ln(α/V) = {by_hand:.4f} nats   (q_y = 1 − α + α/V, V = {v:,}, α = {a:g})
dsnb.train.calibration.smoothed_cross_entropy gives {expected_smoothing_floor():.4f}. A logged loss a little above
that is a model near perfect on its training data, not a stuck one: training longer cannot take the logged
loss below it. Judge the run by the NLL on held-out data, never by the smoothed loss.
"""

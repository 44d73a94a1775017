"""Exercise checks and worked solutions for notebook 07 (training monitoring and stability guards).

Expected values are computed by dsnb (``dsnb.train.monitor``) on inputs that differ from the notebook's
runs (other layer norms, another MoE window, another run's gradient-norm log to set a band for), so the
page does not print the answers.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from dsnb.exercises import Solutions, check_choice, check_number
from dsnb.train.monitor import calibrated_band, grad_norms, imbalance

SOLUTIONS = Solutions("07")
solution = SOLUTIONS.show

#: Exercise 1: the gradient norms of three layer groups; what global norm does the Trainer log?
EX1_LAYER_NORMS = (0.35, 1.2, 2.9)
#: Exercise 2: tokens routed to each of 8 experts of one MoE layer in a monitoring window.
EX2_COUNTS = (131, 88, 468, 0, 93, 117, 84, 109)
#: Exercise 3: another run's raw gradient norms (step: norm) after its EX3_WARMUP warmup steps; a band
#: calibrated on the first ten of them watches the next ten.
EX3_WARMUP = 25
EX3_NORMS = dict(zip(range(26, 46), (0.41, 0.37, 0.52, 0.44, 0.39, 0.47, 0.36, 0.43, 0.58, 0.40,
                                     0.38, 0.33, 0.95, 0.41, 0.29, 0.19, 0.35, 0.79, 0.88, 0.31), strict=True))


def global_norm(layer_norms: tuple[float, ...] = EX1_LAYER_NORMS) -> float:
    """Global L2 gradient norm of a model whose layer groups have these norms (``monitor.grad_norms``)."""
    model = nn.Module()
    model.layers = nn.ModuleList(nn.Linear(1, 1, bias=False) for _ in layer_norms)  # groups layer_00, layer_01...
    for layer, n in zip(model.layers, layer_norms, strict=True):
        layer.weight.grad = torch.full((1, 1), float(n))
    return grad_norms(model)[0]


def check_global_norm(answer: float | None) -> bool:
    """Exercise 1: the global gradient norm from the per-layer norms EX1_LAYER_NORMS."""
    return check_number("1 (global gradient norm)", answer, global_norm(), rel_tol=0.01,
                        hint="norms add like the sides of a right triangle: the square root of the sum of squares.")


def busiest_over_mean(counts: tuple[int, ...] = EX2_COUNTS) -> float:
    """The monitor's imbalance figure (busiest expert / mean load) for one layer's counts."""
    return imbalance(torch.tensor([counts]))[0][0].item()


def check_imbalance(answer: float | None) -> bool:
    """Exercise 2: busiest / mean for EX2_COUNTS (the dead expert counts in the mean)."""
    return check_number("2 (load imbalance)", answer, busiest_over_mean(), rel_tol=0.01,
                        hint="mean over all 8 experts, including the one that got no token; then max / mean.")


def alerting_steps(norms: dict[int, float] = EX3_NORMS, warmup: int = EX3_WARMUP, band_steps: int = 10) -> set[int]:
    """Steps after the calibration window whose norm leaves ``monitor.calibrated_band`` (what the monitor alerts on)."""
    low, high = calibrated_band(list(norms.items()), after=warmup, steps=band_steps)
    return {s for s, v in norms.items() if s > warmup + band_steps and not low <= v <= high}


def _steps(value: object) -> frozenset[int]:
    """Step numbers as a set, from a set / list of numbers or a text such as "38, 41 and 44"."""
    if isinstance(value, str):
        return frozenset(int(v) for v in re.findall(r"\d+", value))
    return frozenset(int(v) for v in value)


def check_alerting_steps(answer: object) -> bool:
    """Exercise 3: which of the later steps of EX3_NORMS a band calibrated on its first ten steps flags."""
    return check_choice("3 (steps a calibrated band flags)", answer, alerting_steps(), normalize=_steps,
                        hint="first the band: the median of the ten norms right after warmup, divided and multiplied "
                             "by 2 (monitor.calibrated_band); then read the next ten steps against it.")


@SOLUTIONS.register(1)
def _solution_1() -> str:
    squares = " + ".join(f"{n:g}²" for n in EX1_LAYER_NORMS)
    return f"""
The global norm is the L2 norm of all gradients as one vector, so squared norms add:
  sqrt({squares}) = {global_norm():.4f}
One layer with a large gradient dominates the global figure; the per-layer norms say which one.
Computed: dsnb.train.monitor.grad_norms on three one-weight layers with these gradients.
"""


@SOLUTIONS.register(2)
def _solution_2() -> str:
    mean = sum(EX2_COUNTS) / len(EX2_COUNTS)
    return f"""
Mean load = {sum(EX2_COUNTS)} / {len(EX2_COUNTS)} = {mean:.2f} tokens (the dead expert counts as 0);
busiest / mean = {max(EX2_COUNTS)} / {mean:.2f} = {busiest_over_mean():.3f}.
The dead expert also raises a "dead_expert" alert: it got no token in the window.
"""


@SOLUTIONS.register(3)
def _solution_3() -> str:
    window = sorted(v for s, v in EX3_NORMS.items() if EX3_WARMUP < s <= EX3_WARMUP + 10)
    low, high = calibrated_band(list(EX3_NORMS.items()), after=EX3_WARMUP)
    fixed = sorted(s for s, v in EX3_NORMS.items() if s > EX3_WARMUP + 10 and not 0.7 <= v <= 1.3)
    return f"""
The band comes from the ten steps after warmup ({EX3_WARMUP + 1}-{EX3_WARMUP + 10}), sorted:
  {window}
  median = ({window[4]} + {window[5]}) / 2 = {(window[4] + window[5]) / 2:.3f};  band = median / 2 .. median × 2 = {low:.3f} .. {high:.3f}
Steps {EX3_WARMUP + 11}-{EX3_WARMUP + 20} outside it: {sorted(alerting_steps())}  (monitor.calibrated_band, then a comparison).
A norm falling toward zero is a signal too (a loss gone flat, weights no longer learning), not only a spike.
The article's fixed 1.0 ± 0.3 band would have flagged {fixed}: nearly every healthy step of a run
with its own scale, while missing {sorted(alerting_steps() - set(fixed))}, the spikes that stay under 1.3.
"""

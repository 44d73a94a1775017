"""Exercise checks and worked solutions for notebook 07 (training monitoring and stability guards).

Expected values are computed by dsnb (``dsnb.train.monitor``, ``dsnb.train.guard``) on inputs that
differ from the notebook's runs, so the page does not print the answers.
"""

from __future__ import annotations

import torch
from torch import nn

from dsnb.exercises import Solutions, check_number
from dsnb.train.guard import StabilityGuard
from dsnb.train.monitor import grad_norms, imbalance

SOLUTIONS = Solutions("07")
solution = SOLUTIONS.show

#: Exercise 1: the gradient norms of three layer groups; what global norm does the Trainer log?
EX1_LAYER_NORMS = (0.6, 0.8, 2.4)
#: Exercise 2: tokens routed to each of 8 experts of one MoE layer in a monitoring window.
EX2_COUNTS = (120, 95, 410, 0, 88, 101, 97, 113)
#: Exercise 3: start learning rate, and how many bad steps in a row the guard has seen.
EX3_LR, EX3_BAD_STEPS = 2e-4, 3


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


def lr_after_bad_steps(lr: float = EX3_LR, bad_steps: int = EX3_BAD_STEPS) -> float:
    """The learning rate after ``bad_steps`` bad steps under ``StabilityGuard``'s defaults (x0.1, floor 1e-6)."""
    guard = StabilityGuard(max_bad_steps=bad_steps + 1)
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=lr)
    for step in range(1, bad_steps + 1):
        param.grad = torch.full((1,), float("nan"))
        guard.see_grads(step, nn.ParameterList([param]), fp16=False)
        guard.before_optimizer(nn.ParameterList([param]), optimizer)
    return optimizer.param_groups[0]["lr"]


def check_lr_after_bad_steps(answer: float | None) -> bool:
    """Exercise 3: the learning rate after EX3_BAD_STEPS bad steps in a row, from EX3_LR."""
    return check_number("3 (learning rate after bad steps)", answer, lr_after_bad_steps(), rel_tol=0.01,
                        hint="each bad step multiplies the rate by 0.1, but it never goes below the 1e-6 floor.")


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
    trail = [EX3_LR * 0.1 ** k for k in range(EX3_BAD_STEPS + 1)]
    return f"""
Each bad step multiplies the rate by 0.1: {' -> '.join(f'{x:.0e}' for x in trail)}; the guard never goes
below its 1e-6 floor, so the answer is {lr_after_bad_steps():.0e}. (With the default max_bad_steps=3 the
third bad step in a row also stops the run with a verified checkpoint.)
Computed: StabilityGuard.before_optimizer on a parameter with a NaN gradient, {EX3_BAD_STEPS} times.
"""

"""Exercise checks and worked solutions for notebook 11 (pitfalls and the pre-flight checklist).

Expected values are computed by dsnb.
"""

from __future__ import annotations

from collections import Counter

import torch

from dsnb.checklist.shift import js_divergence
from dsnb.exercises import Solutions, check_number
from dsnb.train.config import BatchSizeError, plan_batch
from dsnb.train.guard import StabilityGuard

SOLUTIONS = Solutions("11")
solution = SOLUTIONS.show


def smallest_global_batch(at_least: int, per_device: int, processes: int) -> int:
    """The smallest global batch ≥ ``at_least`` that ``plan_batch`` accepts for ``per_device`` on ``processes``."""
    batch = at_least
    while True:
        try:
            plan_batch(batch, per_device, processes)
            return batch
        except BatchSizeError:
            batch += 1


def check_global_batch(answer: int | None, at_least: int = 128, per_device: int = 4, processes: int = 6) -> bool:
    """Exercise 1: the 7B recipe's global batch (128, 4 per device) moved to 6 GPUs: the smallest valid one ≥ 128."""
    return check_number("1 (global batch on 6 GPUs)", answer, smallest_global_batch(at_least, per_device, processes),
                        rel_tol=0.0, hint="each process must get the same share, and that share must be a whole "
                        "number of per-device batches: a multiple of per_device × processes.")


FT = Counter({"def": 3, "return": 1})
REF = Counter({"def": 1, "return": 1, "import": 2})


def check_js(answer: float | None) -> bool:
    """Exercise 2: the JS divergence (bits) of the fine-tuning counts ``FT`` against the reference ``REF``."""
    return check_number("2 (JS divergence, bits)", answer, js_divergence(FT, REF), rel_tol=0.01,
                        hint="normalise both to probabilities, take their average m, and average KL(p‖m) and KL(q‖m) "
                        "with log base 2.")


def bad_steps_to_floor(peak: float = 3e-5, factor: float = 0.1, floor: float = 1e-6) -> int:
    """Bad steps in a row after which ``StabilityGuard`` has lowered a ``peak`` learning rate to its floor."""
    guard = StabilityGuard(max_bad_steps=100, lr_factor=factor, lr_floor=floor)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    steps = 0
    while opt.param_groups[0]["lr"] > floor:
        guard._lower_lr(opt, None)
        steps += 1
    return steps


def check_steps_to_floor(answer: int | None) -> bool:
    """Exercise 3: from the article's peak 3e-5, how many bad steps until the guard's LR sits at the 1e-6 floor."""
    return check_number("3 (bad steps to the floor)", answer, bad_steps_to_floor(), rel_tol=0.0,
                        hint="each bad step multiplies the learning rate by 0.1, but never below the floor.")


@SOLUTIONS.register(1)
def _solution_1() -> str:
    b = smallest_global_batch(128, 4, 6)
    return f"""
On 6 processes with 4 sequences per device, a step consumes 4 × 6 = 24 sequences per accumulation step, so
the global batch must be a multiple of 24. 128 / 24 = 5.33; the next multiple is 24 × 6 = {b}
(accumulation 6). plan_batch(128, 4, 6) raises BatchSizeError; plan_batch({b}, 4, 6) = {plan_batch(b, 4, 6)}.
(Keeping 128 would need per_device 64/3: not a whole number.)
"""


@SOLUTIONS.register(2)
def _solution_2() -> str:
    return f"""
p = (def 3/4, return 1/4, import 0), q = (1/4, 1/4, 2/4), m = (p + q) / 2 = (1/2, 1/4, 1/4).
KL(p‖m) = 3/4·log2(3/2) + 1/4·log2(1) = 0.4387;  KL(q‖m) = 1/4·log2(1/2) + 1/4·log2(1) + 1/2·log2(2) = 0.25.
JS = (0.4387 + 0.25) / 2 = {js_divergence(FT, REF):.4f} bits (dsnb.checklist.shift.js_divergence).
"""


@SOLUTIONS.register(3)
def _solution_3() -> str:
    return f"""
3e-5 → 3e-6 after one bad step → max(3e-7, 1e-6) = 1e-6 after the second: {bad_steps_to_floor()} bad steps.
The guard stops training after max_bad_steps = 3 in a row, so a run whose loss stays non-finite reaches
the article's 1e-6 (claim C29) and stops one step later, with the last good weights saved.
"""

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


#: Exercise 3: losses of the last applied steps (oldest first) and the guard's spike settings.
EX3_LOSSES, EX3_FACTOR, EX3_WINDOW = (2.95, 2.41, 2.31, 2.20, 2.26, 2.12, 1.58), 3.0, 5


def spike_threshold(losses: tuple[float, ...] = EX3_LOSSES, factor: float = EX3_FACTOR, window: int = EX3_WINDOW) -> float:
    """The highest next loss ``StabilityGuard(spike_factor=factor, spike_window=window)`` still applies after ``losses``.

    Found by asking the guard itself (bisection on ``see_loss``), not by re-deriving its rule.
    """
    def applied(value: float) -> bool:
        guard = StabilityGuard(spike_factor=factor, spike_window=window)
        guard.good_losses = list(losses)
        guard.see_loss(len(losses) + 1, torch.tensor(value), fp16=False)
        return guard.pending is None

    lo, hi = 0.0, 1e3 * max(losses)
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if applied(mid) else (lo, mid)
    return lo


def check_spike_threshold(answer: float | None) -> bool:
    """Exercise 3: the largest loss the next step may show before the spike check marks it bad."""
    return check_number("3 (spike threshold)", answer, spike_threshold(), rel_tol=0.01,
                        hint="the guard compares the new loss with spike_factor × the median of the last spike_window "
                             "applied losses: which losses are in the window, and what is their median?")


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
    recent = sorted(EX3_LOSSES[-EX3_WINDOW:])
    median = recent[len(recent) // 2]
    return f"""
The window is the last {EX3_WINDOW} applied losses, {EX3_LOSSES[-EX3_WINDOW:]}: the early 2.95 and 2.41 have left it.
Sorted: {tuple(recent)}, median {median}. A loss above {EX3_FACTOR:g} × {median} = {EX3_FACTOR * median:.2f} is a spike,
so the highest loss still applied is {spike_threshold():.2f} (StabilityGuard.see_loss, asked by bisection).
The median, not the mean, so that one earlier spike in the window does not raise the bar; a factor of
{EX3_FACTOR:g} is a band you set from a calibrated run's step-to-step spread (notebook 07), not a constant.
"""

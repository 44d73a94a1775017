"""Comparing two training setups run over the same seeds: the effect, its interval, and a verdict.

One rule for every page that calls a difference between runs real or noise; taught in notebooks 05
(each technique against the baseline), 04 (KL settings against cross-entropy alone) and 11 (dropout
0.1 vs 0.3). ``compare_seeds`` pairs the two arms by seed (seed 0 of A with seed 0 of B: they share
the data order and the initial weights, so each pair's difference cancels what the seed did to both)
and runs a paired Student-t analysis on the differences, with the critical value of the real degrees
of freedom (pairs - 1). With three seeds that is 4.30, not the 2 of the "two standard errors" rule,
which with three seeds per arm calls 12% of differences real where there are none instead of 5%.
The verdict is one of ``LABELS``; beside it come the effect with its confidence interval, t, the
two-sided p-value, and the smallest effect the runs could have detected (80% power, from their own
spread), so that "within noise" also says how large a difference could still be hiding.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from dsnb.data import missing_extra

try:
    from scipy import optimize, stats
except ModuleNotFoundError as exc:  # SciPy comes with dsnb's 'notebooks' extra (and the 'data' one)
    raise missing_extra(exc, "notebooks") from exc

BETTER, WORSE, NOISE, TOO_FEW = "better", "worse", "within noise", "too few runs to tell"
#: Every verdict ``compare_seeds`` can give.
LABELS = (BETTER, WORSE, NOISE, TOO_FEW)

Runs = Mapping[Hashable, float] | Sequence[float] | np.ndarray


@dataclass(frozen=True)
class Comparison:
    """Candidate minus baseline over paired seeds, in the metric's own units.

    ``effect`` is the mean paired difference and (``ci_low``, ``ci_high``) its ``confidence`` interval;
    ``half_width`` is half that interval's width; ``detectable`` the smallest true effect the runs would
    flag with probability ``power`` (estimated from their own spread: itself uncertain with few seeds).
    ``t``, ``dof`` and ``p_value`` are the paired t-test's; ``label`` is one of ``LABELS``.
    """

    label: str
    effect: float
    ci_low: float
    ci_high: float
    half_width: float
    detectable: float
    t: float
    dof: int
    p_value: float
    pairs: int
    confidence: float
    power: float
    lower_is_better: bool
    unit: str = "seeds"  # what was paired: seeds of two training runs, or prompts answered by two models

    def __str__(self) -> str:
        return self.describe()

    def describe(self, fmt: str = "{:+.3f}") -> str:
        """One line, e.g. ``-0.038 (95% CI -0.066 to -0.010, 3 seeds; detectable 0.041): better``."""
        if self.pairs < 2:
            return f"{self.pairs} paired {self.unit}: {self.label}"
        level = f"{self.confidence:.0%}" if round(self.confidence, 2) == self.confidence else f"{self.confidence:.2%}"
        return (f"{fmt.format(self.effect)} ({level} CI {fmt.format(self.ci_low)} to {fmt.format(self.ci_high)}, "
                f"{self.pairs} {self.unit}; detectable {fmt.format(self.detectable).lstrip('+')}): {self.label}")

    def as_row(self) -> dict[str, Any]:
        """The fields as a dict, for one row of a ``pandas.DataFrame``."""
        return asdict(self)


def _paired(candidate: Runs, baseline: Runs) -> tuple[list[Hashable], np.ndarray, np.ndarray]:
    """(seeds, candidate values, baseline values), paired: by key for mappings, by position otherwise."""
    if isinstance(candidate, Mapping) != isinstance(baseline, Mapping):
        raise TypeError("pass both arms as {seed: value} mappings, or both as sequences in the same seed order")
    if isinstance(candidate, Mapping) and isinstance(baseline, Mapping):
        only_c, only_b = set(candidate) - set(baseline), set(baseline) - set(candidate)
        if only_c or only_b:
            raise ValueError(f"the arms were not run over the same seeds: only the candidate has {sorted(only_c)}, "
                             f"only the baseline has {sorted(only_b)}; run the missing seeds, or pass only the "
                             "seeds both arms ran")
        seeds = sorted(candidate)
        c = np.array([candidate[s] for s in seeds], dtype=float)
        b = np.array([baseline[s] for s in seeds], dtype=float)
    else:
        c, b = np.asarray(candidate, dtype=float).ravel(), np.asarray(baseline, dtype=float).ravel()
        if len(c) != len(b):
            raise ValueError(f"unequal numbers of runs ({len(c)} candidate, {len(b)} baseline): a paired comparison "
                             "needs the same seeds in both arms, in the same order; run the missing seeds, drop "
                             "the unmatched ones, or pass {seed: value} mappings so that they are matched by seed")
        seeds = list(range(len(c)))
    for name, values in (("candidate", c), ("baseline", b)):
        bad = [s for s, v in zip(seeds, values, strict=True) if not math.isfinite(v)]
        if bad:
            raise ValueError(f"the {name} has a non-finite value (NaN or inf) at seed(s) {bad}: a diverged run is a "
                             "result, not noise; fix or rerun it, or report it apart instead of averaging it away")
    return seeds, c, b


def _detectable(sd: float, n: int, t_crit: float, power: float) -> float:
    """Smallest true mean difference the two-sided paired t-test flags with probability ``power``.

    The exact noncentral-t power at ``n`` pairs with standard deviation ``sd`` of the differences.
    """
    if sd == 0:
        return 0.0
    dof = n - 1

    def gap(nc: float) -> float:  # power at noncentrality nc, minus the target; P(T < -c | nc) = P(T > c | -nc)
        return stats.nct.sf(t_crit, dof, nc) + stats.nct.sf(t_crit, dof, -nc) - power

    hi = 2 * t_crit + 2
    while gap(hi) < 0:
        hi *= 2
    return float(optimize.brentq(gap, 0.0, hi, xtol=1e-10)) * sd / math.sqrt(n)


def compare_seeds(candidate: Runs, baseline: Runs, *, lower_is_better: bool, confidence: float = 0.95,
                  power: float = 0.8, unit: str = "seeds") -> Comparison:
    """Compare a candidate setup with a baseline run over the same seeds (paired Student-t on the differences).

    ``candidate`` and ``baseline`` are one value of the metric per run: ``{seed: value}`` mappings (paired
    by seed) or sequences in the same seed order. ``lower_is_better`` says which way is "better" (True
    for a loss or an error rate, False for an accuracy). The label is "better" or "worse" when the
    ``confidence`` interval of the mean difference excludes 0 (two-sided p < 1 - confidence), "within
    noise" when it does not, and "too few runs to tell" with fewer than two pairs. The same rule pairs
    other things measured on both arms, e.g. prompts answered by two models (``unit="prompts"``).
    """
    if not 0 < confidence < 1 or not 0 < power < 1:
        raise ValueError(f"confidence and power are probabilities in (0, 1); got {confidence}, {power}")
    _, c, b = _paired(candidate, baseline)
    d, n = c - b, len(c)
    if n < 2:
        effect = float(d[0]) if n else math.nan
        return Comparison(TOO_FEW, effect, -math.inf, math.inf, math.inf, math.inf, math.nan, 0, math.nan, n,
                          confidence, power, lower_is_better, unit)
    dof, mean, sd = n - 1, float(d.mean()), float(d.std(ddof=1))
    se = sd / math.sqrt(n)
    t_crit = float(stats.t.ppf(1 - (1 - confidence) / 2, dof))
    if se > 0:
        t = mean / se
        p = float(2 * stats.t.sf(abs(t), dof))
    else:  # every pair differs by the same amount: no spread to weigh the effect against
        t, p = (0.0, 1.0) if mean == 0 else (math.copysign(math.inf, mean), 0.0)
    half = t_crit * se
    real = p < 1 - confidence
    label = NOISE if not real else (BETTER if (mean < 0) == lower_is_better else WORSE)
    return Comparison(label, mean, mean - half, mean + half, half, _detectable(sd, n, t_crit, power), t, dof, p, n,
                      confidence, power, lower_is_better, unit)

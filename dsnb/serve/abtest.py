"""A/B test statistics, written out with the standard library and checked against SciPy in the tests (notebook 10).

The χ² tail comes from SciPy (``scipy.stats.chi2``): the course teaches the statistic, not its special function.

- ``srm_test``: the sample-ratio-mismatch check, a χ² goodness-of-fit test of the users per variant
  against the planned weights (flag at p < 0.001: the split itself is broken, ignore the result).
- ``two_proportion_test``: difference of two rates with a Wald confidence interval and the pooled
  two-sided z-test (the same p-value as a 2×2 χ² test without continuity correction).
- ``prob_b_beats_a``: the Beta-binomial posterior probability that B's rate is higher (uniform priors).
- ``sample_size``: users per variant to detect a relative lift at a given α and power.
- ``msprt``: the mixture sequential probability ratio (always-valid: look after every user and stop when
  it reaches 1/α), and ``peeking_false_positive_rate``: what peeking does to the fixed-sample z-test.
- ``simulate_split``: why the article's per-request ``random.random() < 0.5`` breaks an experiment
  (users see both variants and a per-user effect is diluted), against the sticky per-user hash.
- ``aa_false_positive_rate``: A/A experiments (no true effect) flagged at level α, which should be ≈ α.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np
from scipy import stats

_N = NormalDist()


@dataclass
class SRMResult:
    """Sample-ratio-mismatch check: the χ² statistic, its p-value and whether it flags the split.

    ``counts`` holds every planned variant (0 where nobody arrived); ``unplanned`` the users found in a
    variant planned at weight 0, which flag the split whatever the p-value.
    """

    counts: dict[str, int]
    expected: dict[str, float]
    chi2: float
    p_value: float
    mismatch: bool
    unplanned: dict[str, int] = field(default_factory=dict)


def srm_test(counts: Mapping[str, int], weights: Mapping[str, float], threshold: float = 0.001) -> SRMResult:
    """χ² goodness of fit of ``counts`` (users per variant) against the planned ``weights``.

    Every variant in ``weights`` is tested: one missing from ``counts`` (``value_counts()`` drops variants
    nobody reached) counts as 0 users, which is the strongest evidence of a broken split, not the absence
    of it. The χ² runs over the variants with a positive weight; users in a variant planned at 0 are listed
    in ``unplanned`` and flag the split on their own.
    """
    stray = sorted(set(counts) - set(weights))
    if stray:
        raise ValueError(f"counts name variants that are not in the plan: {stray}; pass the weights the experiment "
                         "ran with, every variant included (one planned to get no users has weight 0)")
    if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"weights must be >= 0 with a positive sum, e.g. {{'A': 50, 'B': 50}}; got {dict(weights)}")
    full = {k: int(counts.get(k, 0)) for k in weights}
    if any(c < 0 for c in full.values()) or sum(full.values()) == 0:
        raise ValueError(f"srm_test needs user counts >= 0 and at least one user; got {dict(counts)}")
    planned = {k: w for k, w in weights.items() if w > 0}
    unplanned = {k: c for k, c in full.items() if k not in planned and c > 0}
    n, total_w = sum(full[k] for k in planned), sum(planned.values())
    expected = {k: n * planned[k] / total_w if k in planned else 0.0 for k in weights}
    if n == 0:  # every user is in a variant that should have none
        chi2, p = math.inf, 0.0
    elif len(planned) == 1:  # one variant takes every planned user: nothing to test
        chi2, p = 0.0, 1.0
    else:
        chi2 = sum((full[k] - expected[k]) ** 2 / expected[k] for k in planned)
        p = float(stats.chi2.sf(chi2, len(planned) - 1))
    return SRMResult(full, expected, chi2, p, p < threshold or bool(unplanned), unplanned)


@dataclass
class ProportionTest:
    """Two-proportion comparison: rates, difference B - A with its CI, relative lift, z and two-sided p."""

    rate_a: float
    rate_b: float
    difference: float
    ci_low: float
    ci_high: float
    relative_lift: float
    z: float
    p_value: float
    alpha: float

    @property
    def significant(self) -> bool:
        return self.p_value < self.alpha


def two_proportion_test(successes_a: int, n_a: int, successes_b: int, n_b: int, alpha: float = 0.05) -> ProportionTest:
    """Pooled two-sided z-test of rate B vs rate A, with a (1 - α) Wald interval for the difference."""
    if min(n_a, n_b) <= 0 or not (0 <= successes_a <= n_a and 0 <= successes_b <= n_b):
        raise ValueError("each group needs n > 0 and 0 <= successes <= n")
    pa, pb = successes_a / n_a, successes_b / n_b
    pooled = (successes_a + successes_b) / (n_a + n_b)
    se_pooled = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    z = (pb - pa) / se_pooled if se_pooled > 0 else 0.0
    p = 2 * _N.cdf(-abs(z))
    se = math.sqrt(pa * (1 - pa) / n_a + pb * (1 - pb) / n_b)
    half = _N.inv_cdf(1 - alpha / 2) * se
    lift = (pb - pa) / pa if pa > 0 else math.inf
    return ProportionTest(pa, pb, pb - pa, pb - pa - half, pb - pa + half, lift, z, p, alpha)


def prob_b_beats_a(successes_a: int, n_a: int, successes_b: int, n_b: int, draws: int = 200_000,
                   seed: int = 0) -> float:
    """P(rate_B > rate_A) under Beta(1 + s, 1 + n - s) posteriors (uniform priors), by Monte Carlo."""
    rng = np.random.default_rng(seed)
    a = rng.beta(1 + successes_a, 1 + n_a - successes_a, draws)
    b = rng.beta(1 + successes_b, 1 + n_b - successes_b, draws)
    return float((b > a).mean())


def sample_size(base_rate: float, relative_lift: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Users per variant for a two-sided two-proportion z-test to detect ``base_rate`` -> ``base_rate·(1 + lift)``."""
    p1, p2 = base_rate, base_rate * (1 + relative_lift)
    if not (0 < p1 < 1 and 0 < p2 < 1) or p1 == p2:
        raise ValueError(f"rates must be in (0, 1) and differ: {p1} -> {p2}")
    pbar = (p1 + p2) / 2
    za, zb = _N.inv_cdf(1 - alpha / 2), _N.inv_cdf(power)
    n = (za * math.sqrt(2 * pbar * (1 - pbar)) + zb * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))) ** 2 / (p2 - p1) ** 2
    return math.ceil(n)


def simulated_power(base_rate: float, relative_lift: float, n_per_variant: int, alpha: float = 0.05,
                    runs: int = 2000, seed: int = 0) -> float:
    """Share of ``runs`` simulated experiments (binomial outcomes) that ``two_proportion_test`` flags."""
    rng = np.random.default_rng(seed)
    sa = rng.binomial(n_per_variant, base_rate, runs)
    sb = rng.binomial(n_per_variant, base_rate * (1 + relative_lift), runs)
    return float(np.mean([two_proportion_test(int(a), n_per_variant, int(b), n_per_variant, alpha).significant
                          for a, b in zip(sa, sb, strict=True)]))


def msprt(successes_a: int, n_a: int, successes_b: int, n_b: int, tau: float = 0.05) -> float:
    """Mixture likelihood ratio Λ for "rate B ≠ rate A" (normal approximation, N(0, τ²) mixture over the difference).

    Λ = √(V / (V + τ²)) · exp(τ² d² / (2 V (V + τ²))), with d = p̂_B - p̂_A and V its variance under "no
    difference", from the pooled rate p̄ (as in the pooled z-test): V = p̄(1 - p̄)(1/n_A + 1/n_B). The plug-in
    variance of each arm alone is 0 at 0/n or n/n, which would hide the clearest differences (0/50 vs 50/50).
    (Johari et al., "Always valid inference", 2017.) Rejecting the first time Λ ≥ 1/α keeps the false-positive
    rate at most α however often one looks; 1 / max Λ so far is the always-valid p-value. Λ = 1 (no evidence)
    before both arms have users, and when every user of both arms did the same (no difference, no spread).
    """
    if min(n_a, n_b) <= 0:
        return 1.0
    pa, pb = successes_a / n_a, successes_b / n_b
    pooled = (successes_a + successes_b) / (n_a + n_b)
    var = pooled * (1 - pooled) * (1 / n_a + 1 / n_b)
    if var <= 0:  # both arms all successes or all failures: d = 0
        return 1.0
    return math.sqrt(var / (var + tau**2)) * math.exp(tau**2 * (pb - pa) ** 2 / (2 * var * (var + tau**2)))


def peeking_false_positive_rate(runs: int = 300, looks: int = 20, users_per_look: int = 100, rate: float = 0.2,
                                alpha: float = 0.05, tau: float = 0.05, seed: int = 0) -> dict[str, float]:
    """A/A experiments checked after every ``users_per_look`` users per arm: the share ever flagged by the
    fixed-sample z-test (peeking) and by the mSPRT (Λ ≥ 1/α), which should stay at or below α."""
    rng = np.random.default_rng(seed)
    a = rng.binomial(users_per_look, rate, (runs, looks)).cumsum(1)
    b = rng.binomial(users_per_look, rate, (runs, looks)).cumsum(1)
    naive = sequential = 0
    for r in range(runs):
        ns = [users_per_look * (k + 1) for k in range(looks)]
        naive += any(two_proportion_test(int(a[r, k]), n, int(b[r, k]), n, alpha).significant
                     for k, n in enumerate(ns))
        sequential += any(msprt(int(a[r, k]), n, int(b[r, k]), n, tau) >= 1 / alpha for k, n in enumerate(ns))
    return {"peeking z-test": naive / runs, "mSPRT": sequential / runs}


@dataclass
class SplitSimulation:
    """One simulated experiment under a splitting method."""

    method: str
    users_seeing_both: float  # share of users exposed to both variants
    estimated_lift: float  # measured conversion-rate difference B - A as the analysis sees it
    true_lift: float  # the difference a user fully on B has over a user fully on A
    p_value: float


def simulate_split(method: str, users: int = 2000, requests_per_user: int = 5, base_rate: float = 0.10,
                   effect: float = 0.03, seed: int = 0, salt: str = "exp") -> SplitSimulation:
    """Users convert (once, per user) with probability ``base_rate + effect × (share of their requests on B)``.

    ``method="sticky"``: the gateway's hash gives each user one variant; the analysis compares users.
    ``method="per_request"``: every request flips a coin (the article's split); a user has no single
    variant, so the analysis credits each conversion to the variant of the user's last request.
    """
    from dsnb.serve.assignment import assign

    rng = np.random.default_rng(seed)
    if method == "sticky":
        on_b = np.array([assign(f"user-{u}", salt, {"A": 0.5, "B": 0.5}) == "B" for u in range(users)], dtype=float)
        exposure = np.repeat(on_b[:, None], requests_per_user, axis=1)
    elif method == "per_request":
        exposure = (rng.random((users, requests_per_user)) < 0.5).astype(float)
    else:
        raise ValueError("method is 'sticky' or 'per_request'")
    share_b = exposure.mean(1)
    converted = rng.random(users) < base_rate + effect * share_b
    label_b = exposure[:, -1] == 1  # the variant the analysis credits the user to
    both = float(np.mean((share_b > 0) & (share_b < 1)))
    n_b, n_a = int(label_b.sum()), int((~label_b).sum())
    test = two_proportion_test(int(converted[~label_b].sum()), n_a, int(converted[label_b].sum()), n_b)
    return SplitSimulation(method, both, test.difference, effect, test.p_value)


@dataclass
class ClusteredTest:
    """Difference of per-request rates B - A, with a naive and a cluster-robust standard error.

    ``se_naive`` treats every request as independent (the two-proportion Wald error); ``se_clustered``
    lets the requests of one user be correlated (CR1 sandwich over users, as statsmodels'
    ``cov_type="cluster"``). The p-values are two-sided normal ones from each.
    """

    difference: float
    se_naive: float
    se_clustered: float
    p_naive: float
    p_clustered: float
    clusters: int


def clustered_difference(outcome: Sequence[float] | np.ndarray, on_b: Sequence[bool] | np.ndarray,
                         cluster: Sequence[Any] | np.ndarray) -> ClusteredTest:
    """B - A difference of a per-request outcome (a click) with standard errors naive and clustered by ``cluster``.

    The regression of the outcome on an intercept and the B indicator gives the difference of means; its
    sandwich variance sums each cluster's scores before squaring them, so a user whose requests all
    click (or none do) counts as one piece of evidence, not as many.
    """
    y, x = np.asarray(outcome, dtype=float), np.asarray(on_b, dtype=float)
    if y.shape != x.shape or y.ndim != 1 or len(y) != len(cluster) or not 0 < x.sum() < len(x):
        raise ValueError("outcome, on_b and cluster need one entry per request, with requests in both variants")
    design = np.column_stack([np.ones_like(x), x])
    bread = np.linalg.inv(design.T @ design)
    beta = bread @ design.T @ y
    scores = design * (y - design @ beta)[:, None]
    _, index = np.unique(np.asarray(cluster), return_inverse=True)
    per_cluster = np.zeros((index.max() + 1, 2))
    np.add.at(per_cluster, index, scores)
    g, n = len(per_cluster), len(y)
    variance = g / (g - 1) * (n - 1) / (n - 2) * bread @ (per_cluster.T @ per_cluster) @ bread
    pa, pb = y[x == 0].mean(), y[x == 1].mean()
    se_naive = math.sqrt(pa * (1 - pa) / (x == 0).sum() + pb * (1 - pb) / (x == 1).sum())
    se_clustered = math.sqrt(variance[1, 1])
    diff = float(beta[1])
    def p_of(se: float) -> float:
        return 2 * _N.cdf(-abs(diff) / se) if se > 0 else float(diff == 0)

    return ClusteredTest(diff, se_naive, se_clustered, p_of(se_naive), p_of(se_clustered), g)


@dataclass
class CTRSimulation:
    """One simulated experiment on a per-request outcome (a click), analysed per request."""

    method: str
    estimated_lift: float  # B - A click rate per request
    true_lift: float  # the mean rise in a request's click probability when B answers it
    test: ClusteredTest


def simulate_ctr(method: str, users: int = 2000, requests_per_user: int = 5, base_rate: float = 0.10,
                 effect: float = 0.03, concentration: float = 2.0, seed: int = 0, salt: str = "exp") -> CTRSimulation:
    """Requests click with probability ``min(1, p_user + effect)`` on B and ``p_user`` on A, analysed per request.

    ``p_user`` ~ Beta with mean ``base_rate`` and ``concentration`` (a + b): users differ in how often they
    click, so one user's requests are correlated. ``method`` as in ``simulate_split`` ("sticky" or the
    article's "per_request" coin flip); the analysis compares the click rate of requests B answered with
    that of requests A answered (the article's CTR).
    """
    from dsnb.serve.assignment import assign

    rng = np.random.default_rng(seed)
    p_user = rng.beta(base_rate * concentration, (1 - base_rate) * concentration, users)
    if method == "sticky":
        on_b = np.array([assign(f"user-{u}", salt, {"A": 0.5, "B": 0.5}) == "B" for u in range(users)])
        exposure = np.repeat(on_b[:, None], requests_per_user, axis=1)
    elif method == "per_request":
        exposure = rng.random((users, requests_per_user)) < 0.5
    else:
        raise ValueError("method is 'sticky' or 'per_request'")
    lifted = np.minimum(1.0, p_user + effect)
    clicks = rng.random((users, requests_per_user)) < np.where(exposure, lifted[:, None], p_user[:, None])
    user = np.repeat(np.arange(users)[:, None], requests_per_user, axis=1)
    test = clustered_difference(clicks.ravel(), exposure.ravel(), user.ravel())
    return CTRSimulation(method, test.difference, float((lifted - p_user).mean()), test)


def aa_false_positive_rate(runs: int = 500, users: int = 2000, rate: float = 0.2, alpha: float = 0.05,
                           seed: int = 0) -> float:
    """Share of A/A experiments (same rate in both arms, users split by the hash) with p < α."""
    from dsnb.serve.assignment import assign

    rng = np.random.default_rng(seed)
    flagged = 0
    for r in range(runs):
        on_b = np.array([assign(f"user-{u}", f"aa-{r}", {"A": 0.5, "B": 0.5}) == "B" for u in range(users)])
        converted = rng.random(users) < rate
        test = two_proportion_test(int(converted[~on_b].sum()), int((~on_b).sum()), int(converted[on_b].sum()),
                                   int(on_b.sum()), alpha)
        flagged += test.significant
    return flagged / runs


def summarize(scores: Sequence[tuple[str, float]], threshold: float = 0.5) -> dict[str, tuple[int, int]]:
    """Per variant, (successes, trials) from (variant, score) pairs: a score above ``threshold`` is a success."""
    out: dict[str, list[int]] = {}
    for variant, score in scores:
        s = out.setdefault(variant, [0, 0])
        s[0] += int(score > threshold)
        s[1] += 1
    return {k: (v[0], v[1]) for k, v in out.items()}

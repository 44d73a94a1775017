"""A/B statistics checked against SciPy and hand cases; the per-request split's dilution; A/A false positives."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dsnb.serve import abtest

stats = pytest.importorskip("scipy.stats")
integrate = pytest.importorskip("scipy.integrate")


def test_srm_equals_scipy_chisquare_and_flags_a_broken_split():
    counts = {"A": 5120, "B": 4880}
    res = abtest.srm_test(counts, {"A": 0.5, "B": 0.5})
    ref = stats.chisquare([5120, 4880], [5000, 5000])
    assert res.chi2 == pytest.approx(ref.statistic) and res.p_value == pytest.approx(ref.pvalue)
    assert not res.mismatch  # p = 0.016: unusual but above the 0.001 line
    three = abtest.srm_test({"A": 700, "B": 200, "C": 100}, {"A": 0.6, "B": 0.3, "C": 0.1})
    ref3 = stats.chisquare([700, 200, 100], [600, 300, 100])
    assert three.p_value == pytest.approx(ref3.pvalue) and three.mismatch


def test_two_proportion_test_equals_scipy_and_hand_case():
    res = abtest.two_proportion_test(100, 1000, 130, 1000)
    _, p, _, _ = stats.chi2_contingency([[100, 900], [130, 870]], correction=False)
    assert res.p_value == pytest.approx(p, rel=1e-9)
    pooled = 230 / 2000
    assert res.z == pytest.approx(0.03 / math.sqrt(pooled * (1 - pooled) * 2 / 1000))
    se = math.sqrt(0.1 * 0.9 / 1000 + 0.13 * 0.87 / 1000)
    assert (res.ci_low, res.ci_high) == pytest.approx((0.03 - 1.959964 * se, 0.03 + 1.959964 * se), rel=1e-5)
    assert res.relative_lift == pytest.approx(0.3) and res.significant
    with pytest.raises(ValueError, match="successes"):
        abtest.two_proportion_test(5, 4, 1, 10)


def test_probability_b_beats_a_equals_numerical_integration():
    sa, na, sb, nb = 40, 200, 55, 200
    a, b = stats.beta(1 + sa, 1 + na - sa), stats.beta(1 + sb, 1 + nb - sb)
    exact, _ = integrate.quad(lambda x: b.pdf(x) * a.cdf(x), 0, 1)
    assert abtest.prob_b_beats_a(sa, na, sb, nb) == pytest.approx(exact, abs=0.005)


def test_sample_size_formula_and_its_simulated_power():
    n = abtest.sample_size(0.10, 0.20)
    p1, p2, pbar = 0.10, 0.12, 0.11
    za, zb = stats.norm.ppf(0.975), stats.norm.ppf(0.8)
    expected = (za * math.sqrt(2 * pbar * (1 - pbar)) + zb * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))) ** 2 / 0.02**2
    assert n == math.ceil(expected)
    assert abtest.simulated_power(0.10, 0.20, n, runs=1500) == pytest.approx(0.8, abs=0.04)
    assert abtest.simulated_power(0.10, 0.20, n // 4, runs=1500) < 0.4
    with pytest.raises(ValueError, match="differ"):
        abtest.sample_size(0.1, 0.0)


def test_per_request_split_dilutes_the_effect_and_mixes_users():
    sticky = [abtest.simulate_split("sticky", seed=s, effect=0.05) for s in range(30)]
    random_split = [abtest.simulate_split("per_request", seed=s, effect=0.05) for s in range(30)]
    mean = lambda runs: sum(r.estimated_lift for r in runs) / len(runs)  # noqa: E731
    assert mean(sticky) == pytest.approx(0.05, abs=0.012)  # unbiased
    assert mean(random_split) == pytest.approx(0.05 * 0.2, abs=0.012)  # (0.6 - 0.4) of the effect with 5 requests
    assert all(r.users_seeing_both == 0 for r in sticky)
    assert random_split[0].users_seeing_both == pytest.approx(1 - 2 * 0.5**5, abs=0.02)
    assert sum(r.p_value < 0.05 for r in sticky) > 2 * sum(r.p_value < 0.05 for r in random_split)


def test_aa_false_positive_rate_is_near_alpha():
    rate = abtest.aa_false_positive_rate(runs=300, users=1000)
    assert 0.05 - 3 * math.sqrt(0.05 * 0.95 / 300) < rate < 0.05 + 3 * math.sqrt(0.05 * 0.95 / 300)


def test_summarize_counts_successes_per_variant():
    assert abtest.summarize([("A", 1.0), ("A", 0.0), ("B", 1.0)]) == {"A": (1, 2), "B": (1, 1)}


def test_msprt_hand_case_and_its_edge_cases():
    pa, pb, n, tau = 0.20, 0.25, 1000, 0.05
    pooled = (pa + pb) / 2
    var = pooled * (1 - pooled) * 2 / n  # the variance of p̂_B - p̂_A if the rates were equal
    by_hand = math.sqrt(var / (var + tau**2)) * math.exp(tau**2 * 0.05**2 / (2 * var * (var + tau**2)))
    assert abtest.msprt(200, n, 250, n, tau) == pytest.approx(by_hand)
    assert abtest.msprt(0, 0, 1, 1) == 1.0 and abtest.msprt(0, 10, 0, 10) == 1.0
    assert abtest.msprt(200, 1000, 300, 1000) > 20  # a clear effect crosses 1/α = 20
    assert abtest.msprt(200, 1000, 201, 1000) < 1  # no effect: the evidence stays below 1


def test_peeking_inflates_the_z_test_but_not_the_msprt():
    rates = abtest.peeking_false_positive_rate(runs=400, looks=20, users_per_look=100)
    se = math.sqrt(0.05 * 0.95 / 400)
    assert rates["peeking z-test"] > 0.05 + 4 * se  # looking 20 times and stopping at the first p < 0.05
    assert rates["mSPRT"] <= 0.05 + 2 * se


def test_srm_tests_every_planned_variant_counting_missing_ones_as_zero():
    """value_counts() drops a variant nobody reached: it must still be tested, as 0 users."""
    res = abtest.srm_test({"A": 500, "B": 500}, {"A": 1, "B": 1, "C": 1})
    ref = stats.chisquare([500, 500, 0])
    assert res.counts == {"A": 500, "B": 500, "C": 0}
    assert res.chi2 == pytest.approx(ref.statistic) and res.p_value == pytest.approx(ref.pvalue, rel=1e-6)
    assert res.p_value < 1e-100 and res.mismatch


def test_srm_with_every_user_in_one_arm_is_a_mismatch_not_an_error():
    res = abtest.srm_test({"B": 1000}, {"A": 0.5, "B": 0.5})
    ref = stats.chisquare([0, 1000])
    assert res.counts == {"A": 0, "B": 1000}
    assert res.chi2 == pytest.approx(ref.statistic) and res.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    assert res.mismatch


def test_srm_flags_users_in_a_variant_planned_at_weight_zero():
    res = abtest.srm_test({"A": 500, "B": 490, "C": 3}, {"A": 1, "B": 1, "C": 0})
    assert res.unplanned == {"C": 3} and res.mismatch  # C should have had no users at all
    assert res.expected["C"] == 0 and res.p_value == pytest.approx(stats.chisquare([500, 490]).pvalue)
    clean = abtest.srm_test({"A": 500, "B": 490, "C": 0}, {"A": 1, "B": 1, "C": 0})
    assert clean.unplanned == {} and not clean.mismatch
    with pytest.raises(ValueError, match=r"not in the plan: \['D'\]"):
        abtest.srm_test({"A": 5, "D": 1}, {"A": 1, "B": 1})
    with pytest.raises(ValueError, match="at least one user"):
        abtest.srm_test({}, {"A": 1, "B": 1})


def test_msprt_sees_a_difference_when_one_arm_has_no_spread():
    """0/50 against 50/50: the plug-in variance of each arm is 0, which must not read as "no evidence"."""
    assert abtest.msprt(0, 50, 50, 50) >= 20
    assert abtest.msprt(0, 10, 10, 10) > 1
    assert abtest.msprt(0, 10, 0, 10) == 1.0  # no difference and no spread: no evidence either way


def test_assignment_hash_keeps_salt_and_user_apart():
    """With salt + ":" + user, the user "x:y" under salt "a" and the user "y" under salt "a:x" shared a hash."""
    from dsnb.serve.assignment import assign, bucket

    assert bucket("x:y", "a") != bucket("y", "a:x")
    same = sum(assign(f"x:{u}", "a", {"A": 1, "B": 1}) == assign(str(u), "a:x", {"A": 1, "B": 1}) for u in range(400))
    assert 140 < same < 260  # independent draws agree about half the time, not always


def test_clustered_difference_equals_statsmodels_cluster_robust_ols():
    sm = pytest.importorskip("statsmodels.api")
    rng = np.random.default_rng(0)
    clicks, on_b, user = rng.random(500) < 0.2, rng.random(500) < 0.5, rng.integers(0, 80, 500)
    res = abtest.clustered_difference(clicks, on_b, user)
    ref = sm.OLS(clicks.astype(float), sm.add_constant(on_b.astype(float))).fit(cov_type="cluster",
                                                                                 cov_kwds={"groups": user})
    assert res.difference == pytest.approx(ref.params[1], abs=1e-12)
    assert res.se_clustered == pytest.approx(ref.bse[1], rel=1e-9)
    assert res.p_clustered == pytest.approx(ref.pvalues[1], rel=1e-6)
    ab = abtest.two_proportion_test(int(clicks[~on_b].sum()), int((~on_b).sum()), int(clicks[on_b].sum()), int(on_b.sum()))
    assert res.se_naive == pytest.approx((ab.ci_high - ab.difference) / 1.959963984540054, rel=1e-9)
    with pytest.raises(ValueError, match="both variants"):
        abtest.clustered_difference([1, 0], [True, True], [0, 1])


def test_per_request_metric_the_coin_flip_is_unbiased_and_sticky_needs_clustered_errors():
    flagged = {m: [abtest.simulate_ctr(m, effect=0.0, seed=s).test for s in range(60)] for m in ("sticky", "per_request")}
    naive_sticky = np.mean([t.p_naive < 0.05 for t in flagged["sticky"]])
    clustered_sticky = np.mean([t.p_clustered < 0.05 for t in flagged["sticky"]])
    assert naive_sticky >= 0.12 and clustered_sticky <= 0.10  # users' requests are correlated under the sticky split
    assert np.mean([t.p_naive < 0.05 for t in flagged["per_request"]]) <= 0.10
    lifts = [abtest.simulate_ctr("per_request", effect=0.03, seed=s) for s in range(30)]
    assert np.mean([r.estimated_lift for r in lifts]) == pytest.approx(0.03, abs=0.004)  # per request: unbiased
    with pytest.raises(ValueError, match="sticky"):
        abtest.simulate_ctr("random")

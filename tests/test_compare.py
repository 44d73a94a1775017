"""dsnb.train.compare: the paired seed comparison checked against SciPy's paired t-test and by hand."""

from __future__ import annotations

import importlib
import math
import sys

import numpy as np
import pytest

stats = pytest.importorskip("scipy.stats")

from dsnb.train.compare import LABELS, compare_seeds  # noqa: E402  (needs SciPy)

BASELINE = [4.695, 4.716, 4.734]  # held-out NLL of three seeds, in seed order
FGSM_LIKE = [4.679, 4.680, 4.676]  # lower on every seed, but by uneven amounts


@pytest.mark.parametrize(("a", "b"), [
    (FGSM_LIKE, BASELINE),
    ([0.21, 0.25, 0.22, 0.30, 0.27], [0.20, 0.22, 0.23, 0.25, 0.24]),
    ([1.0, 2.0, 3.5, 2.2], [0.5, 1.2, 2.0, 2.9]),
    ([5.0, 5.1], [4.0, 4.3]),
])
def test_t_and_p_value_equal_scipy_ttest_rel(a, b):
    res, ref = compare_seeds(a, b, lower_is_better=True), stats.ttest_rel(a, b)
    assert res.t == pytest.approx(ref.statistic, rel=1e-12)
    assert res.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    assert res.dof == ref.df == len(a) - 1
    low, high = ref.confidence_interval(0.95)
    assert (res.ci_low, res.ci_high) == pytest.approx((low, high), rel=1e-9)


def test_interval_by_hand_with_the_tabulated_critical_values():
    d = np.array(FGSM_LIKE) - np.array(BASELINE)  # -0.016, -0.036, -0.058
    res = compare_seeds(FGSM_LIKE, BASELINE, lower_is_better=True)
    se = d.std(ddof=1) / math.sqrt(3)
    assert res.effect == pytest.approx(d.mean())
    assert res.half_width == pytest.approx(4.303 * se, rel=1e-3)  # t(0.975; 2 dof) = 4.303 in every table
    assert (res.ci_low, res.ci_high) == pytest.approx((d.mean() - 4.303 * se, d.mean() + 4.303 * se), rel=1e-3)
    five = compare_seeds([1, 2, 3, 4, 6], [0, 0, 0, 0, 0], lower_is_better=False, confidence=0.9)
    assert five.half_width == pytest.approx(2.132 * np.std([1, 2, 3, 4, 6], ddof=1) / math.sqrt(5), rel=1e-3)


def test_fgsm_like_gap_is_within_noise_where_two_standard_errors_called_it_better():
    """t = -3.02 with 3 seeds: past the old rule's 2, short of Student's 4.30 for 2 degrees of freedom."""
    a, b = np.array(FGSM_LIKE), np.array(BASELINE)
    old_se = math.sqrt(a.var(ddof=1) / 3 + b.var(ddof=1) / 3)
    assert abs(a.mean() - b.mean()) > 2 * old_se  # the old rule: "better"
    res = compare_seeds(FGSM_LIKE, BASELINE, lower_is_better=True)
    assert res.t == pytest.approx(-3.02, abs=0.01) and res.p_value > 0.05
    assert res.label == "within noise" and res.ci_low < 0 < res.ci_high
    assert res.detectable > abs(res.effect)  # the runs could not have seen an effect this small reliably


def test_direction_follows_the_metric():
    loss_a, loss_b = [4.60, 4.61, 4.65], [4.69, 4.72, 4.73]
    assert compare_seeds(loss_a, loss_b, lower_is_better=True).label == "better"
    assert compare_seeds(loss_b, loss_a, lower_is_better=True).label == "worse"
    assert compare_seeds(loss_a, loss_b, lower_is_better=False).label == "worse"  # e.g. an accuracy
    assert compare_seeds(loss_b, loss_a, lower_is_better=False).label == "better"
    res = compare_seeds(loss_a, loss_b, lower_is_better=True)
    assert res.effect < 0 and res.ci_high < 0 and res.p_value < 0.05
    assert set(LABELS) == {"better", "worse", "within noise", "too few runs to tell"}


def test_pairs_by_seed_when_given_mappings():
    base = {0: 4.695, 1: 4.716, 2: 4.734}
    shuffled = {2: 4.676, 0: 4.679, 1: 4.680}  # insertion order is not seed order
    assert compare_seeds(shuffled, base, lower_is_better=True).t == pytest.approx(stats.ttest_rel(FGSM_LIKE, BASELINE).statistic)
    with pytest.raises(ValueError, match=r"same seeds.*only the candidate has \[3\].*only the baseline has \[2\]"):
        compare_seeds({0: 1.0, 1: 2.0, 3: 3.0}, base, lower_is_better=True)
    with pytest.raises(TypeError, match="both"):
        compare_seeds(shuffled, BASELINE, lower_is_better=True)


def test_unequal_lengths_and_non_finite_values_are_errors_that_say_what_to_do():
    with pytest.raises(ValueError, match="unequal numbers of runs .*run the missing seeds"):
        compare_seeds([1.0, 2.0, 3.0], [1.0, 2.0], lower_is_better=True)
    with pytest.raises(ValueError, match=r"candidate has a non-finite value .* seed\(s\) \[1\].*rerun"):
        compare_seeds([1.0, math.nan, 3.0], [1.0, 2.0, 3.0], lower_is_better=True)
    with pytest.raises(ValueError, match=r"baseline has a non-finite value .* \['b'\]"):
        compare_seeds({"a": 1.0, "b": 2.0}, {"a": 1.0, "b": math.inf}, lower_is_better=True)
    with pytest.raises(ValueError, match="confidence"):
        compare_seeds([1.0, 2.0], [1.0, 2.0], lower_is_better=True, confidence=95)


def test_fewer_than_two_pairs_is_too_few_to_tell():
    one = compare_seeds([4.5], [4.9], lower_is_better=True)
    assert one.label == "too few runs to tell" and one.effect == pytest.approx(-0.4)
    assert one.detectable == math.inf and math.isnan(one.p_value)
    assert compare_seeds([], [], lower_is_better=True).label == "too few runs to tell"


def test_identical_differences_on_every_seed():
    same = compare_seeds([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], lower_is_better=True)
    assert same.label == "within noise" and same.effect == 0 and same.p_value == 1.0
    shifted = compare_seeds([0.9, 1.9, 2.9], [1.0, 2.0, 3.0], lower_is_better=True)
    assert shifted.label == "better" and shifted.detectable == pytest.approx(0.0, abs=1e-12)


def test_detectable_effect_is_found_with_the_stated_power():
    """Simulated paired runs with a true effect equal to ``detectable``: the t-test flags about 80% of them."""
    sd, n = 0.02, 4
    rng = np.random.default_rng(0)
    base, z = rng.normal(size=n), np.array([-1.5, -0.5, 0.5, 1.5])
    res = compare_seeds(base + sd * z / z.std(ddof=1), base, lower_is_better=True)  # differences with sd 0.02
    d = rng.normal(res.detectable, sd, size=(40_000, n))
    flagged = stats.ttest_1samp(d, 0.0, axis=1).pvalue < 0.05
    assert flagged.mean() == pytest.approx(0.8, abs=0.01)
    # close to the textbook approximation (t_{1-α/2} + t_{power}) · sd / √n, and a little larger
    approx = (stats.t.ppf(0.975, n - 1) + stats.t.ppf(0.8, n - 1)) * sd / math.sqrt(n)
    assert approx < res.detectable < 1.2 * approx


def test_describe_says_effect_interval_and_verdict():
    text = compare_seeds(FGSM_LIKE, BASELINE, lower_is_better=True).describe()
    assert text.startswith("-0.037 (95% CI -0.089 to +0.016") and "3 seeds" in text and text.endswith(": within noise")


def test_without_scipy_the_error_names_the_extra(monkeypatch):
    for name in [m for m in sys.modules if m == "scipy" or m.startswith("scipy.")]:
        monkeypatch.setitem(sys.modules, name, None)  # what an install without the extra looks like
    monkeypatch.setitem(sys.modules, "scipy", None)
    monkeypatch.delitem(sys.modules, "dsnb.train.compare")
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'dsnb\[notebooks\]'"):
        importlib.import_module("dsnb.train.compare")

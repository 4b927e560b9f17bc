"""The stochastic-vs-tuned verdict: the paired interval against stored values, and every verdict rule."""

from __future__ import annotations

import math

import numpy as np
import pytest

from greenkd_utils.analysis.verdict import classify, paired_verdict


def test_paired_interval_matches_the_textbook_value():
    # Differences 1, 2, 3: mean 2, sd 1, t(0.975, df=2) = 4.302653 -> 2 -+ 4.302653 / sqrt(3).
    v = paired_verdict([90.0, 90.0, 90.0], [91.0, 92.0, 93.0])
    half = 4.302652729911275 / math.sqrt(3)
    assert v.difference_pct == pytest.approx(2.0)
    assert v.ci_low_pct == pytest.approx(2.0 - half, abs=1e-9)
    assert v.ci_high_pct == pytest.approx(2.0 + half, abs=1e-9)
    assert v.verdict == "inconclusive"
    assert v.n_seeds == 3 and v.tuned_mean_pct == 90.0 and v.stochastic_mean_pct == 92.0


def test_pairing_removes_the_seed_to_seed_spread():
    # Seeds differ by 10 points, but stochastic is always 0.1 to 0.3 above tuned on the same seed.
    tuned = [80.0, 90.0, 85.0, 95.0, 70.0]
    stochastic = [80.1, 90.3, 85.2, 95.1, 70.3]
    assert paired_verdict(tuned, stochastic).verdict == "equivalent"


@pytest.mark.parametrize(
    "low, high, expected",
    [
        (-0.5, 0.5, "equivalent"),
        (-1.0, 1.0, "equivalent"),
        (0.2, 0.8, "equivalent"),  # inside the margin wins over "better"
        (-3.0, -0.5, "worse"),
        (0.5, 3.0, "better"),
        (-2.0, 0.5, "inconclusive"),
        (float("nan"), float("nan"), "inconclusive"),
    ],
)
def test_verdict_rules(low, high, expected):
    assert classify(low, high, 1.0) == expected


def test_margin_is_a_stated_parameter():
    tuned, stochastic = [90.0, 91.0, 92.0], [88.6, 89.4, 90.5]
    assert paired_verdict(tuned, stochastic, margin_pct=1.0).verdict == "worse"
    assert paired_verdict(tuned, stochastic, margin_pct=3.0).verdict == "equivalent"


def test_one_seed_has_no_interval():
    v = paired_verdict([90.0], [91.0])
    assert math.isnan(v.ci_low_pct) and v.verdict == "inconclusive"
    assert "one seed" in v.sentence()


def test_identical_differences_give_a_point_interval():
    v = paired_verdict([90.0, 80.0], [90.5, 80.5])
    assert v.ci_low_pct == v.ci_high_pct == pytest.approx(0.5)
    assert v.verdict == "equivalent"


@pytest.mark.parametrize("margin", [0, -1, float("nan"), float("inf")])
def test_bad_margin_is_refused_by_name(margin):
    with pytest.raises(ValueError, match="margin"):
        paired_verdict([90.0, 91.0], [90.0, 91.0], margin_pct=margin)


def test_unpaired_inputs_are_refused():
    with pytest.raises(ValueError, match="same"):
        paired_verdict([90.0, 91.0], [90.0])


# --------------------------------------------------------------------------- the power calculation
def test_expected_half_width_is_the_t_interval_of_a_sample_with_that_spread():
    # A sample whose standard deviation is exactly sd: scipy's one-sample t interval has that half-width.
    from scipy import stats as sps

    from greenkd_utils.analysis.verdict import expected_half_width

    for n, sd in ((5, 1.98), (10, 1.322), (20, 0.7)):
        base = np.linspace(-1.0, 1.0, n)
        sample = base / base.std(ddof=1) * sd
        interval = sps.ttest_1samp(sample, 0.0).confidence_interval(0.95)
        assert expected_half_width(sd, n) == pytest.approx((interval.high - interval.low) / 2, rel=1e-9)


def test_seeds_for_half_width_is_the_fewest_that_reach_the_margin():
    from greenkd_utils.analysis.verdict import expected_half_width, seeds_for_half_width

    # The demo's amendment: the largest seed-to-seed spread of a baseline arm, 0.935 points (tuned CMC over
    # 5 seeds), as the spread of a difference of two independent arms: sqrt(2) * 0.935 = 1.322 points.
    n = seeds_for_half_width(1.322, 1.0)
    assert n == 10
    assert expected_half_width(1.322, n) <= 1.0 < expected_half_width(1.322, n - 1)
    assert seeds_for_half_width(0.0, 1.0) == 2
    with pytest.raises(ValueError, match="half_width"):
        seeds_for_half_width(1.0, 0.0)
    with pytest.raises(ValueError, match="sd_difference"):
        seeds_for_half_width(float("nan"), 1.0)

"""Does stochastic tau match tuned tau? A paired interval and a verdict against a stated margin.

The paper's claim is an equivalence: one run with tau ~ U[2, 20] per batch reaches the accuracy of
the validation-tuned fixed tau. With the same seeds on both sides the fair test is paired: the
per-seed difference ``stochastic - tuned``, its mean and the 95% t interval of that mean (computed by
scipy's paired t-test, not a hand-written table). The verdict reads the interval against an
equivalence margin (default 1 accuracy point):

``equivalent``    the whole interval lies inside [-margin, +margin]
``worse``         otherwise, the whole interval lies below 0
``better``        otherwise, the whole interval lies above 0
``inconclusive``  otherwise (the interval straddles 0 and reaches past the margin)

With fewer than two seeds there is no interval, and the verdict is ``inconclusive``. When every seed gives
the same difference the t interval has zero width and the verdict follows from that one value: with few
seeds, read such a verdict with care (it happens when both arms reach identical accuracies, e.g. a tiny test set).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, Sequence, Tuple

import numpy as np
from scipy import stats

DEFAULT_MARGIN_PCT = 1.0
CONFIDENCE = 0.95
VERDICTS = ("equivalent", "better", "worse", "inconclusive")


@dataclass(frozen=True)
class PairedVerdict:
    """The paired comparison of stochastic against tuned accuracy (percentage points)."""

    n_seeds: int
    tuned_mean_pct: float
    stochastic_mean_pct: float
    difference_pct: float
    ci_low_pct: float
    ci_high_pct: float
    margin_pct: float
    verdict: str

    def to_dict(self) -> Dict[str, float | int | str]:
        return asdict(self)

    def sentence(self) -> str:
        """One line for a figure or a README: the difference, its interval and the verdict."""
        interval = (
            f"95% CI [{self.ci_low_pct:+.2f}, {self.ci_high_pct:+.2f}]"
            if math.isfinite(self.ci_low_pct)
            else "no interval with one seed"
        )
        return (
            f"stochastic - tuned = {self.difference_pct:+.2f} points ({interval}, {self.n_seeds} seeds): "
            f"{self.verdict} at a +-{self.margin_pct:g}-point margin"
        )


def check_margin(margin_pct: float) -> float:
    margin = float(margin_pct)
    if not (math.isfinite(margin) and margin > 0):
        raise ValueError(f"the equivalence margin must be a finite number of points > 0; got {margin_pct!r}")
    return margin


def classify(ci_low: float, ci_high: float, margin_pct: float) -> str:
    """The verdict for an interval of the difference (stochastic - tuned), in points."""
    if not (math.isfinite(ci_low) and math.isfinite(ci_high)):
        return "inconclusive"
    if -margin_pct <= ci_low and ci_high <= margin_pct:
        return "equivalent"
    if ci_high < 0:
        return "worse"
    if ci_low > 0:
        return "better"
    return "inconclusive"


def paired_verdict(
    tuned_pct: Sequence[float], stochastic_pct: Sequence[float], margin_pct: float = DEFAULT_MARGIN_PCT
) -> PairedVerdict:
    """Compare per-seed accuracies (same seeds, same order) of the tuned and the stochastic runs."""
    margin = check_margin(margin_pct)
    tuned = np.asarray(tuned_pct, dtype=float)
    stochastic = np.asarray(stochastic_pct, dtype=float)
    if tuned.shape != stochastic.shape or tuned.ndim != 1 or tuned.size == 0:
        raise ValueError(
            f"paired accuracies need the same non-empty list of seeds on both sides; got {tuned.size} tuned "
            f"and {stochastic.size} stochastic values"
        )
    low, high = paired_interval(tuned, stochastic)
    return PairedVerdict(
        n_seeds=int(tuned.size),
        tuned_mean_pct=float(tuned.mean()),
        stochastic_mean_pct=float(stochastic.mean()),
        difference_pct=float((stochastic - tuned).mean()),
        ci_low_pct=low,
        ci_high_pct=high,
        margin_pct=margin,
        verdict=classify(low, high, margin),
    )


def paired_interval(tuned: np.ndarray, stochastic: np.ndarray) -> Tuple[float, float]:
    """The 95% t interval of the mean per-seed difference (stochastic - tuned); NaN bounds with fewer than two
    seeds."""
    difference = stochastic - tuned
    if difference.size < 2:
        return float("nan"), float("nan")
    if np.allclose(difference, difference[0]):
        # No spread: the t interval degenerates to the point itself (scipy would return NaN).
        mean = float(difference.mean())
        return mean, mean
    interval = stats.ttest_rel(stochastic, tuned).confidence_interval(confidence_level=CONFIDENCE)
    return float(interval.low), float(interval.high)


def expected_half_width(sd_difference: float, n_seeds: int, confidence: float = CONFIDENCE) -> float:
    """The expected half-width of the paired t interval over ``n_seeds`` seeds when the per-seed difference has
    standard deviation ``sd_difference``: t_{(1+confidence)/2, n-1} * sd / sqrt(n)."""
    if n_seeds < 2:
        return float("inf")
    return float(stats.t.ppf((1 + confidence) / 2, n_seeds - 1) * sd_difference / math.sqrt(n_seeds))


def seeds_for_half_width(sd_difference: float, half_width: float, confidence: float = CONFIDENCE) -> int:
    """The power calculation of a verdict: the fewest seeds whose expected interval half-width is at most
    ``half_width`` (e.g. the equivalence margin). ``sd_difference`` must come from baseline runs, never from
    the differences under test (docs/protocol.md)."""
    if not (sd_difference >= 0 and math.isfinite(sd_difference)):
        raise ValueError(f"sd_difference must be a finite number >= 0; got {sd_difference!r}")
    if not half_width > 0:
        raise ValueError(f"half_width must be > 0; got {half_width!r}")
    n = 2
    while expected_half_width(sd_difference, n, confidence) > half_width:
        n += 1
    return n

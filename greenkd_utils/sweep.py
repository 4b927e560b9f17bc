"""The tuned baseline the paper argues against: one full fixed-tau run per grid value.

The winning tau is chosen on the validation split held out from the training
set (never on the test set). The tuned result's accuracy is the winner's; its
energy, CO2, FLOPs and wall time are the sum over the whole grid, since that
is what finding the winner cost.

The same bill, summed over whatever runs a search started, serves the successive-halving search
(:mod:`greenkd_utils.successive_halving`), whose runs may stop early.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Iterable, List, Sequence

from .carbon import EnergyReport
from .config import RunConfig, TemperatureSpec
from .engine import RunResult, train_run
from .flops import gflops_millions
from .store import RunStore

log = logging.getLogger(__name__)


@dataclass
class TunedResult:
    runs: List[RunResult]
    chosen: RunResult

    @property
    def taus(self) -> List[float]:
        return [r.config.temperature.tau for r in self.runs]

    @property
    def chosen_tau(self) -> float:
        return self.chosen.config.temperature.tau

    @property
    def test_accuracy(self) -> float:
        return self.chosen.test_accuracy

    @property
    def val_accuracy(self) -> float:
        return self.chosen.val_accuracy

    @property
    def energy(self) -> EnergyReport:
        return EnergyReport.total(r.energy for r in self.runs)

    @property
    def training_flops(self) -> float:
        return sum(r.training_flops for r in self.runs)

    @property
    def training_gflops_millions(self) -> float:
        return gflops_millions(self.training_flops)

    @property
    def wall_time_s(self) -> float:
        return sum(r.wall_time_s for r in self.runs)

    @property
    def epochs_trained(self) -> int:
        """Training epochs the search paid for (one history row per epoch of each run)."""
        return sum(len(r.history) for r in self.runs)


def choose_on_validation(runs: Sequence[RunResult]) -> RunResult:
    """The run with the best validation accuracy; ties go to the earlier grid value."""
    if not runs:
        raise ValueError("the tau grid is empty")
    if any(math.isnan(r.val_accuracy) for r in runs):
        raise ValueError(
            "choosing tau needs a validation split (val_fraction > 0); the test set is never used to choose"
        )
    return max(runs, key=lambda r: r.val_accuracy)  # max() keeps the first of equal keys


def check_tau_search(base: RunConfig) -> None:
    """What every search over fixed taus needs of its base config: a KD run, and a validation split to
    choose on (the test set never chooses)."""
    if base.role != "kd":
        raise ValueError("a tau search needs a KD config (role='kd')")
    if base.val_fraction <= 0:
        raise ValueError("a tau search needs val_fraction > 0: tau is chosen on validation, never on test")


def tuned_sweep(
    base: RunConfig,
    taus: Iterable[float],
    store: RunStore,
    device="auto",
    data_root=None,
    progress: bool = True,
) -> TunedResult:
    """Run ``base`` once per fixed tau in ``taus`` (cached runs are loaded) and pick the winner."""
    check_tau_search(base)
    taus = [float(t) for t in taus]
    runs = [
        train_run(base.replace(temperature=TemperatureSpec.fixed(tau)), store, device, data_root, progress)
        for tau in taus
    ]
    chosen = choose_on_validation(runs)
    log.info("tuned sweep %s: tau=%g chosen on validation (%.2f%%)", base.name, chosen.config.temperature.tau, chosen.val_accuracy)
    return TunedResult(runs=runs, chosen=chosen)

"""The tuned baseline the paper argues against: one full fixed-tau run per grid value.

The winning tau is chosen on the validation split held out from the training
set (never on the test set). The tuned result's accuracy is the winner's; its
energy, CO2, FLOPs and wall time are the sum over the whole grid, since that
is what finding the winner cost.

The same bill, summed over whatever runs a search started, serves the successive-halving search
(:mod:`greenkd_utils.runs.successive_halving`), whose runs may stop early, and a QAT run billed with the float
run it starts from (:func:`train_qat`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence

from greenkd_utils.core.config import TemperatureSpec
from greenkd_utils.energy.flops import gflops_millions
from greenkd_utils.energy.report import EnergyReport
from greenkd_utils.energy.phases import PHASES
from greenkd_utils.runs.lifecycle import train
from greenkd_utils.runs.record import RunResult
from greenkd_utils.runs.registry import task_for
from greenkd_utils.runs.store import RunStore

log = logging.getLogger(__name__)


@dataclass
class BilledResult:
    """One run's result billed for every run it took to get it: accuracy is ``chosen``'s, energy, FLOPs and
    time are the sum over ``runs`` (a tuned grid, a successive-halving search, QAT after its float start)."""

    runs: List[RunResult]
    chosen: RunResult

    tau = property(lambda self: self.chosen.tau)
    test_accuracy = property(lambda self: self.chosen.test_accuracy)
    val_accuracy = property(lambda self: self.chosen.val_accuracy)
    energy = property(lambda self: EnergyReport.total(r.energy for r in self.runs))
    training_flops = property(lambda self: sum(r.training_flops for r in self.runs))
    training_gflops_millions = property(lambda self: gflops_millions(self.training_flops))
    wall_time_s = property(lambda self: sum(r.wall_time_s for r in self.runs))

    @property
    def energy_by_phase(self) -> Dict[str, EnergyReport]:
        """Energy per phase summed over the runs (a phase only if every run recorded it)."""
        phases = [set(r.energy_by_phase) for r in self.runs]
        common = set.intersection(*phases) if phases else set()
        return {p: EnergyReport.total(r.energy_by_phase[p] for r in self.runs) for p in PHASES if p in common}

    @property
    def epochs_trained(self) -> int:
        """Training epochs the search paid for (one history row per epoch of each run)."""
        return sum(len(r.history) for r in self.runs)


@dataclass
class TunedResult(BilledResult):
    """A search over fixed taus: ``chosen`` is the run whose tau won on validation."""

    taus = property(lambda self: [r.config.temperature.tau for r in self.runs])
    chosen_tau = property(lambda self: self.chosen.config.temperature.tau)


def choose_on_validation(runs: Sequence[RunResult]) -> RunResult:
    """The run with the best validation accuracy; ties go to the earlier grid value."""
    if not runs:
        raise ValueError("the tau grid is empty")
    if any(math.isnan(r.val_accuracy) for r in runs):
        raise ValueError(
            "choosing tau needs a validation split (val_fraction > 0); the test set is never used to choose"
        )
    return max(runs, key=lambda r: r.val_accuracy)  # max() keeps the first of equal keys


def check_tau_search(base) -> None:
    """What every search over fixed taus needs of its base config: a run with a KD term (its task says so:
    a KD, data-free KD or detection KD config), and a validation split to choose on (the test set never
    chooses)."""
    if not task_for(base).has_kd_term(base):
        raise ValueError(f"a tau search needs a config with a KD term (a temperature and a teacher, e.g. "
                         f"role='kd'); got {type(base).__name__} with role {getattr(base, 'role', None)!r}")
    if base.val_fraction <= 0:
        raise ValueError("a tau search needs val_fraction > 0: tau is chosen on validation, never on test")


def grid_configs(base, taus: Iterable[float]) -> List:
    """The runs of a tuned grid: ``base`` once per fixed tau."""
    return [base.replace(temperature=TemperatureSpec.fixed(float(tau))) for tau in taus]


def tuned_sweep(
    base,
    taus: Iterable[float],
    store: RunStore,
    device="auto",
    data_root=None,
    progress: bool = True,
    **options,
) -> TunedResult:
    """Run ``base`` (any KD config: classification, data-free, detection) once per fixed tau in ``taus``
    (cached runs are loaded) and pick the winner on validation. ``options`` go to the task."""
    check_tau_search(base)
    runs = [train(config, store, device, data_root, progress, **options) for config in grid_configs(base, taus)]
    chosen = choose_on_validation(runs)
    log.info("tuned sweep %s: tau=%g chosen on validation (%.2f%%)", base.name, chosen.config.temperature.tau, chosen.val_accuracy)
    return TunedResult(runs=runs, chosen=chosen)


class QATPipeline(BilledResult):
    """What getting the int8 model cost: the float run QAT started from (if any) plus QAT itself; the accuracy
    is the int8 model's."""

    def __init__(self, qat: RunResult, initial: Optional[RunResult] = None):
        super().__init__(runs=[qat] if initial is None else [initial, qat], chosen=qat)

    qat = property(lambda self: self.chosen)
    initial = property(lambda self: self.runs[0] if len(self.runs) > 1 else None)


def train_qat(config, store: RunStore, device="auto", data_root=None, progress: bool = True) -> QATPipeline:
    """The finished QAT run of ``config`` (a :class:`~greenkd_utils.core.quantization.QATConfig`) billed with
    the float run it starts from, each from ``store`` or trained once."""
    initial = None if config.init_from is None else train(config.init_from, store, device, data_root, progress)
    return QATPipeline(train(config, store, device, data_root, progress), initial)

"""Table 6 as functions: DeepInversion and CMI, each with a tuned and a stochastic temperature.

``table6(exp)`` runs (or loads) every cell for the experiment's profile and
returns the table the notebook shows, one row per (dataset, synthesizer,
tuned|stochastic), with the synthesis and student phases side by side and
summed; ``compare_with_paper`` sets each row beside the paper's cell.

Per-profile settings live in ``configs/dfkd.yaml`` (read by :mod:`greenkd_utils.settings.data_free`); the
notebook's experiment (``experiments.setup(profile, notebook="table6_dfkd", ...)``) carries them with its
knobs applied. The teacher is the profile's ``teacher_config`` for the DFKD teacher architecture, so it is
trained once and shared through the run store.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from greenkd_utils.core.config import TemperatureSpec
from greenkd_utils.core.dfkd.config import DFKDConfig
from greenkd_utils.energy.flops import gflops_millions
from greenkd_utils.energy.report import EnergyReport
from greenkd_utils.energy.phases import energy_between
from greenkd_utils.paper import reference
from greenkd_utils.paper.experiments import Experiment, summarise
from greenkd_utils.runs.lifecycle import train
from greenkd_utils.runs.record import RunResult
from greenkd_utils.runs.sweep import TunedResult, grid_configs, tuned_sweep
from greenkd_utils.runs.tasks.data_free import load_samples
from greenkd_utils.settings.data_free import DFKDSettings, load_dfkd_settings

log = logging.getLogger(__name__)

PAPER_METRICS = reference.headline_metrics()


def settings_of(exp: Experiment) -> DFKDSettings:
    """The settings the notebook set ``exp`` up with, else ``configs/dfkd.yaml``'s for its profile."""
    return exp.settings if isinstance(exp.settings, DFKDSettings) else load_dfkd_settings(exp.profile.name)


def dfkd_config(
    exp: Experiment,
    method: str,
    dataset: str,
    seed: int,
    temperature: TemperatureSpec,
    epochs: Optional[int] = None,
) -> DFKDConfig:
    """The run config of one cell of Table 6 under ``exp``'s profile and data-free settings (:func:`settings_of`)."""
    settings = settings_of(exp)
    profile = exp.profile
    train_changes = dict(settings.train)
    if epochs is not None:
        train_changes["epochs"] = int(epochs)
    # How the student distils comes from the data-free settings; the data split and logit option from the profile.
    from_settings = {name: getattr(settings, name) for name in ("kd_steps", "loss", "alpha", "kl_reduction")}
    profile_fields = ("val_fraction", "train_subset", "test_subset", "logit_standardization")
    from_profile = {name: getattr(profile, name) for name in profile_fields}
    return DFKDConfig(
        dataset=dataset,
        model=settings.student_model,
        teacher=profile.teacher_config(dataset, seed, settings.teacher_model),
        synthesis=settings.synthesis(method),
        temperature=temperature,
        seed=seed,
        train=profile.train_settings("student", **train_changes),
        profile=profile.name,
        **from_settings,
        **from_profile,
    )


@dataclass
class Table6:
    """What :func:`table6` returns: the table, the per-tau runs behind it, and where they live."""

    table: pd.DataFrame
    grid: pd.DataFrame
    results: Dict[Tuple[str, str, str], List[Any]] = field(default_factory=dict)  # (dataset, dfkd_method, method) -> per seed

    def samples(self, exp: Experiment, dataset: str, method: str, which: str = "kd_stochastic"):
        """The newest synthesized round of the first seed's run (images uint8, targets)."""
        first = self.results[(dataset, method, which)][0]
        run = first.chosen if isinstance(first, TunedResult) else first
        return load_samples(run, exp.store)

    def class_names(self, dataset: str) -> List[str]:
        for (name, _, _), cell in self.results.items():
            if name == dataset:
                return list(_runs_of(cell[0])[0].data["class_names"])
        raise ValueError(f"no run of dataset {dataset!r}; have: {', '.join(sorted({k[0] for k in self.results}))}")


def _runs_of(result) -> List[RunResult]:
    return list(result.runs) if isinstance(result, TunedResult) else [result]


def synthesis_energy(run: RunResult) -> EnergyReport:
    return run.energy_of("synthesis")


def student_energy(run: RunResult) -> EnergyReport:
    """Everything but synthesis: the student's steps, the evaluation passes and checkpoint writes."""
    return energy_between(run.energy, run.energy_of("synthesis"))


def phase_columns(exp: Experiment, results: Sequence[Any]) -> Dict[str, float]:
    """Synthesis and student phases of one cell, per seed (mean over seeds; a tuned seed sums its grid)."""
    per_seed = []
    for result in results:
        runs = _runs_of(result)
        synthesis = exp.energy(EnergyReport.total(synthesis_energy(r) for r in runs))
        student = exp.energy(EnergyReport.total(student_energy(r) for r in runs))
        per_seed.append(
            {
                "synthesis_gflops_millions": sum(gflops_millions(r.flops_of("synthesis")) for r in runs),
                "student_gflops_millions": sum(gflops_millions(r.flops_of("training")) for r in runs),
                "energy_synthesis_kwh": synthesis.energy_kwh,
                "energy_student_kwh": student.energy_kwh,
                "energy_synthesis_kwh_pue": synthesis.energy_kwh_pue,
                "energy_student_kwh_pue": student.energy_kwh_pue,
                "co2_synthesis_g": synthesis.co2_g,
                "co2_student_g": student.co2_g,
                "wall_time_synthesis_s": sum(r.wall_time_by_phase.get("synthesis", 0.0) for r in runs),
                "teacher_accuracy_pct": runs[0].extras["teacher_test_accuracy"],
            }
        )
    columns = {key: float(np.mean([row[key] for row in per_seed])) for key in per_seed[0]}
    total = columns["energy_synthesis_kwh"] + columns["energy_student_kwh"]
    columns["synthesis_share_of_energy"] = columns["energy_synthesis_kwh"] / total if total > 0 else float("nan")
    return columns


def table6(
    exp: Experiment,
    methods: Optional[Sequence[str]] = None,
    datasets: Optional[Sequence[str]] = None,
    seeds: Optional[Sequence[int]] = None,
    tau_grid: Optional[Sequence[float]] = None,
    epochs: Optional[int] = None,
) -> Table6:
    """Every cell of Table 6 for ``exp``'s profile; None = the settings of ``configs/dfkd.yaml``
    (seeds and tau grid fall back to the profile's when the file leaves them null); an experiment from
    ``experiments.setup(..., notebook="table6_dfkd")`` brings the settings its notebook chose."""
    settings, methods, datasets, seeds, taus = _cells(exp, methods, datasets, seeds, tau_grid)
    rows, grid_rows, results = [], [], {}
    for dataset in datasets:
        for method in methods:
            tuned, stochastic = [], []
            for seed in seeds:
                make = functools.partial(dfkd_config, exp, method, dataset, seed, epochs=epochs)
                sweep = tuned_sweep(make(TemperatureSpec.fixed(1.0)), taus, exp.store, exp.device, exp.data_root, exp.progress)
                stoch = train(make(exp.profile.stochastic()), exp.store, exp.device, exp.data_root, exp.progress)
                tuned.append(sweep)
                stochastic.append(stoch)
                for run in sweep.runs:
                    grid_rows.append(_grid_row(dataset, method, seed, run, chosen=run is sweep.chosen))
                grid_rows.append(_grid_row(dataset, method, seed, stoch, chosen=False))
            for which, cell in (("kd_tuned", tuned), ("kd_stochastic", stochastic)):
                results[(dataset, method, which)] = cell
                row = summarise(
                    exp, cell, dataset=dataset, dfkd_method=method, method=which,
                    teacher=settings.teacher_model, student=settings.student_model,
                )
                row.update(phase_columns(exp, cell))
                rows.append(row)
    return Table6(pd.DataFrame(rows), pd.DataFrame(grid_rows), results)


def _cells(exp: Experiment, methods=None, datasets=None, seeds=None, tau_grid=None):
    """The settings and the cells of Table 6: None = the notebook's settings, then the profile's."""
    settings = settings_of(exp)
    taus = [float(t) for t in (tau_grid or settings.tau_grid or exp.profile.tau_grid)]
    if len(taus) < 1:
        raise ValueError("the tau grid of the tuned baseline is empty")
    return (settings, list(methods or settings.methods), list(datasets or settings.datasets),
            list(seeds or settings.seeds or exp.profile.seeds), taus)


def needed_runs(exp: Experiment, plan, epochs: Optional[int] = None, **cells) -> None:
    """Add the runs of :func:`table6` to ``plan``; ``cells``: its ``methods``, ``datasets``, ``seeds``, ``tau_grid``."""
    _, methods, datasets, seeds, taus = _cells(exp, **cells)
    for dataset in datasets:
        for method in methods:
            for seed in seeds:
                make = functools.partial(dfkd_config, exp, method, dataset, seed, epochs=epochs)
                plan.add_all(grid_configs(make(TemperatureSpec.fixed(1.0)), taus), "table6_dfkd")
                plan.add(make(exp.profile.stochastic()), "table6_dfkd")


def _grid_row(dataset: str, method: str, seed: int, run: RunResult, chosen: bool) -> Dict[str, Any]:
    spec = run.config.temperature
    return {
        "dataset": dataset,
        "dfkd_method": method,
        "seed": seed,
        "temperature": "fixed" if spec.mode == "fixed" else "stochastic",
        "tau": spec.tau if spec.mode == "fixed" else float("nan"),
        "tau_label": spec.short(),
        "val_accuracy_pct": run.val_accuracy,
        "test_accuracy_pct": run.test_accuracy,
        "chosen_on_validation": chosen,
        "synthesis_gflops_millions": gflops_millions(run.flops_of("synthesis")),
        "student_gflops_millions": gflops_millions(run.flops_of("training")),
        "energy_synthesis_kwh": synthesis_energy(run).energy_kwh,
        "energy_student_kwh": student_energy(run).energy_kwh,
        "energy_source": run.energy.source,
        "wall_time_s": run.wall_time_s,
    }


def compare_with_paper(table: pd.DataFrame) -> pd.DataFrame:
    """Each row's accuracy, GFLOPs (M) (synthesis included), kWh with PUE and CO2 beside the paper's."""
    ours = table.assign(loss=table["dfkd_method"])  # the reference names the synthesizer in its 'loss' column
    comparison = reference.compare_with_paper(ours, "table6", PAPER_METRICS, keys=("dataset", "method"), extra_match=("loss",))
    return comparison.rename(columns={"loss": "dfkd_method"})

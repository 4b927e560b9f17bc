"""The paper's experiments as functions: what a notebook calls after its ``parameters`` cell.

``setup(profile, notebook=..., **knobs)`` is the one set-up of every notebook: it reads the notebook's knobs
(:mod:`greenkd_utils.settings.notebooks`) and binds the profile to a run store and a device, as an
:class:`Experiment` (a :class:`DetectionExperiment` for the detection notebook) that carries the notebook's own
settings and knobs. Its methods return cached or freshly trained runs; :func:`summarise` turns the runs of one
table cell into a row (accuracy as mean and std over seeds; energy, CO2 and FLOPs per seed, mean over seeds,
under the experiment's PUE and carbon intensity), and :func:`verdict_table` compares stochastic with tuned tau
over the same seeds. The tables themselves are one module per notebook in :mod:`greenkd_utils.paper`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from greenkd_utils.analysis.plotting import energy_sources
from greenkd_utils.analysis.verdict import (
    DEFAULT_MARGIN_PCT,
    PairedVerdict,
    check_margin,
    paired_verdict,
)
from greenkd_utils.core.config import RunConfig, TemperatureSpec
from greenkd_utils.core.detection.config import DetectionRunConfig
from greenkd_utils.core.losses import check_logit_standardization
from greenkd_utils.energy.report import EnergyReport
from greenkd_utils.energy.phases import PHASES
from greenkd_utils.runs.execution import hardware_label
from greenkd_utils.runs.lifecycle import train
from greenkd_utils.runs.record import RunResult
from greenkd_utils.runs.store import RunStore, atomic_write_bytes, atomic_write_json
from greenkd_utils.runs.sweep import BilledResult, TunedResult, grid_configs, tuned_sweep
from greenkd_utils.settings.notebooks import read_knobs

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class BoundProfile:
    """A profile (anything with ``pue`` and ``carbon_intensity_g_per_kwh``) bound to a run store, a device and
    a data root: what every notebook's experiment has, whatever it trains."""

    profile: Any
    store: RunStore
    device: str = "auto"
    data_root: Optional[str] = None
    progress: bool = True
    # What the notebook that set it up chose: its name, its family's own settings (Tables 6, 7, 8, Figure 3,
    # beyond the paper; None for the others) and every knob it passed, parsed (None: the profile's value).
    notebook: Optional[str] = None
    settings: Any = None
    knobs: Dict[str, Any] = field(default_factory=dict)

    @property
    def pue(self) -> float:
        return self.profile.pue

    @property
    def carbon_intensity(self) -> float:
        return self.profile.carbon_intensity_g_per_kwh

    def energy(self, report: EnergyReport) -> EnergyReport:
        """A report re-derived with this experiment's PUE and carbon intensity."""
        return report.with_constants(pue=self.pue, carbon_intensity_g_per_kwh=self.carbon_intensity)

    def constants_note(self) -> str:
        return (
            f"PUE {self.pue:g} (the paper's), carbon intensity {self.carbon_intensity:g} g CO2eq/kWh; "
            "kWh columns: energy_kwh is device energy, energy_kwh_pue includes PUE (the paper's kWh include PUE)"
        )

    def models_note(self) -> str:
        """The teacher and student this profile trains, as the profile names them."""
        return f"teacher {self.profile.teacher_model} -> student {self.profile.student_model}"

    def output_dir(self) -> Path:
        """Where the notebook writes its tables and figures: its ``output_dir`` knob, else figures/<profile>."""
        return output_dir_for(self.profile.name, self.knobs.get("output_dir"))


@dataclass
class Experiment(BoundProfile):
    """The classification profile bound to a run store: teachers, students, tuned and stochastic KD."""

    def run(self, config: RunConfig) -> RunResult:
        return train(config, self.store, self.device, self.data_root, self.progress)

    def teacher(self, dataset: str, seed: int, model: Optional[str] = None) -> RunResult:
        return self.run(self.profile.teacher_config(dataset, seed, model))

    def student(self, dataset: str, seed: int, model: Optional[str] = None) -> RunResult:
        return self.run(self.profile.student_config(dataset, seed, model))

    def stochastic(self, dataset: str, seed: int, loss: str = "hkd", **kw) -> RunResult:
        return self.run(self.stochastic_config(dataset, seed, loss, **kw))

    def tuned(self, dataset: str, seed: int, loss: str = "hkd", taus: Optional[Sequence[float]] = None, **kw) -> TunedResult:
        return tuned_sweep(self.tuned_base(dataset, seed, loss, **kw), taus or self.profile.tau_grid, self.store,
                           self.device, self.data_root, self.progress)

    # The configs behind the methods above, for the run plan (greenkd_utils.paper.needed_runs).
    def stochastic_config(self, dataset: str, seed: int, loss: str = "hkd", **kw) -> RunConfig:
        return self.profile.kd_config(dataset, seed, loss, self.profile.stochastic(), **kw)

    def tuned_base(self, dataset: str, seed: int, loss: str = "hkd", **kw) -> RunConfig:
        return self.profile.kd_config(dataset, seed, loss, TemperatureSpec.fixed(1.0), **kw)

    def tuned_configs(self, dataset: str, seed: int, loss: str = "hkd", taus: Optional[Sequence[float]] = None,
                      **kw) -> List[RunConfig]:
        return grid_configs(self.tuned_base(dataset, seed, loss, **kw), taus or self.profile.tau_grid)

    def method_configs(self, method: str, dataset: str, seed: int, loss: str = "hkd") -> List[RunConfig]:
        """The runs behind one of Table 1's methods (teacher, student, kd_tuned, kd_stochastic)."""
        if method == "teacher":
            return [self.profile.teacher_config(dataset, seed)]
        if method == "student":
            return [self.profile.student_config(dataset, seed)]
        if method == "kd_tuned":
            return self.tuned_configs(dataset, seed, loss)
        if method == "kd_stochastic":
            return [self.stochastic_config(dataset, seed, loss)]
        raise ValueError(f"unknown method {method!r}; valid: teacher, student, kd_tuned, kd_stochastic")


@dataclass
class DetectionExperiment(BoundProfile):
    """The detection profile (``configs/detection.yaml``) bound to a run store, a device and the energy
    constants of the classification profile of the same name."""

    def run(self, config: DetectionRunConfig) -> RunResult:
        return train(config, self.store, self.device, self.data_root, self.progress,
                     num_workers=self.profile.num_workers)

    def teacher(self) -> RunResult:
        return self.run(self.profile.teacher_config())

    def stochastic(self, seed: int, loss: str = "hkd") -> RunResult:
        return self.run(self.profile.kd_config(seed, loss))

    def fixed(self, seed: int, loss: str, tau: float) -> RunResult:
        return self.run(self.profile.kd_config(seed, loss, TemperatureSpec.fixed(tau)))

    def tuned(self, seed: int, loss: str = "hkd", taus: Optional[Sequence[float]] = None) -> TunedResult:
        base_config = self.profile.kd_config(seed, loss, TemperatureSpec.fixed(1.0))
        return tuned_sweep(base_config, taus or self.profile.tau_grid, self.store, self.device, self.data_root,
                           self.progress, num_workers=self.profile.num_workers)


def setup(profile: str = "demo", notebook: Optional[str] = None, progress: bool = True, **knobs) -> BoundProfile:
    """The experiment of ``notebook`` (None: a classification experiment) at ``profile``, with its ``knobs``.

    Every knob is parsed first, so papermill's strings (``seeds="[0, 1]"``) work and a bad value
    (``seeds="abc"``) or a knob the notebook does not take fails here, naming it, before anything trains; None
    keeps the profile's (or the notebook's settings') value. ``results_dir`` defaults to ``$GREENKD_RESULTS``
    or ``<repo>/results/<profile>``, ``data_root`` to ``$GREENKD_DATA_ROOT``.
    """
    chosen = read_knobs(notebook, profile, **knobs)
    name = chosen.knobs["profile"]
    results_dir = chosen.results_dir or os.environ.get("GREENKD_RESULTS") or REPO_ROOT / "results" / name
    data_root = chosen.data_root or os.environ.get("GREENKD_DATA_ROOT")
    if os.environ.get("GREENKD_PROGRESS") == "0":
        progress = False
    kind = DetectionExperiment if chosen.family == "detection" else Experiment
    return kind(chosen.profile, RunStore(results_dir), chosen.device, None if data_root is None else str(data_root),
                progress, notebook=notebook, settings=chosen.settings, knobs=chosen.knobs)


# ---------------------------------------------------------------------------------------------
# Turning runs into table rows
# ---------------------------------------------------------------------------------------------
# How the single-run arm's tau reads in a table, per temperature mode.
SINGLE_RUN_TAU = {
    "stochastic": "U[{low:g}, {high:g}] per batch",
    "stochastic_per_sample": "U[{low:g}, {high:g}] per sample",
    "ctkd": "learned (CTKD), within [{low:g}, {high:g}]",
}


def summarise(exp: Experiment, results: Sequence[RunResult | TunedResult], **keys) -> Dict[str, Any]:
    """One table row from the per-seed results of one cell."""
    accuracies = np.array([r.test_accuracy for r in results], dtype=float)
    energies = [exp.energy(r.energy) for r in results]
    sources = sorted({e.source for e in energies})
    methods = sorted({f"{c.name}: {c.source} ({c.method})" for e in energies for c in e.components.values()})
    row = dict(keys)
    row.update(
        {
            "accuracy_pct": float(accuracies.mean()),
            "accuracy_pct_std": float(accuracies.std(ddof=1)) if len(accuracies) > 1 else 0.0,
            "n_seeds": len(results),
            "training_gflops_millions": float(np.mean([r.training_gflops_millions for r in results])),
            "energy_kwh": float(np.mean([e.energy_kwh for e in energies])),
            "energy_kwh_pue": float(np.mean([e.energy_kwh_pue for e in energies])),
            "co2_g": float(np.mean([e.co2_g for e in energies])),
            "wall_time_s": float(np.mean([r.wall_time_s for r in results])),
            "energy_source": "/".join(sources),
            "energy_method": "; ".join(methods),
            "hardware": hardware_of(results),
        }
    )
    # The parts of the total, where every seed's runs recorded them (records from before phases had none).
    by_phase = [r.energy_by_phase for r in results]
    for phase in PHASES:
        if by_phase and all(phase in p for p in by_phase):
            row[f"energy_{phase}_kwh"] = float(np.mean([exp.energy(p[phase]).energy_kwh for p in by_phase]))
    tuned = [r for r in results if isinstance(r, TunedResult)]
    if tuned:
        row["tau"] = "chosen on validation: " + ", ".join(f"{r.chosen_tau:g}" for r in tuned)
        row["grid_size"] = len(tuned[0].runs)
    elif results and results[0].tau.get("mode") in SINGLE_RUN_TAU:
        t = results[0].tau
        row["tau"] = SINGLE_RUN_TAU[t["mode"]].format(low=t["low"], high=t["high"])
        row["grid_size"] = 1
    else:
        row["tau"] = ""
        row["grid_size"] = 1
    return row


def hardware_of(results: Sequence[RunResult | TunedResult]) -> str:
    """What the runs behind a row were trained on (CPU kernels and threads, or the GPU), ``mixed: ...`` when
    they differ: a row that averages runs of several CPU capabilities or thread counts says so."""
    runs = [run for r in results for run in (r.runs if isinstance(r, BilledResult) else [r])]
    labels = sorted({hardware_label(run.hardware) for run in runs})
    return labels[0] if len(labels) == 1 else "mixed: " + "; ".join(labels)


def checked_losses(exp: Experiment, losses: Optional[Iterable[str]] = None) -> List[str]:
    """``losses`` (None: the profile's), each refused before anything trains if the profile's options do not
    apply to it."""
    chosen = list(losses or exp.profile.losses)
    for loss in chosen:
        check_logit_standardization(loss, exp.profile.logit_standardization)
    return chosen


def loss_cells(exp: Experiment, losses: Optional[Iterable[str]] = None) -> List[Tuple[str, str]]:
    """The (dataset, loss) cells of Table 4 and its verdicts, data set by data set (see :func:`checked_losses`)."""
    chosen = checked_losses(exp, losses)
    return [(dataset, loss) for dataset in exp.profile.datasets for loss in chosen]


def energy_ratio(table: pd.DataFrame, by: Sequence[str] = ("dataset",)) -> pd.DataFrame:
    """Energy of the tuned sweep over the stochastic run, per group: the paper's headline (~grid size)."""
    out = []
    for key, group in table.groupby(list(by)):
        tuned = group[group["method"] == "kd_tuned"]
        stoch = group[group["method"] == "kd_stochastic"]
        if tuned.empty or stoch.empty:
            continue
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(by, key))
        row["grid_size"] = int(tuned["grid_size"].iloc[0])
        row["energy_ratio_tuned_over_stochastic"] = float(tuned["energy_kwh"].iloc[0] / stoch["energy_kwh"].iloc[0])
        row["flops_ratio_tuned_over_stochastic"] = float(
            tuned["training_gflops_millions"].iloc[0] / stoch["training_gflops_millions"].iloc[0]
        )
        row["accuracy_difference_pct"] = float(stoch["accuracy_pct"].iloc[0] - tuned["accuracy_pct"].iloc[0])
        out.append(row)
    return pd.DataFrame(out)


VERDICT_COLUMNS = (
    "dataset", "loss", "n_seeds", "tuned_mean_pct", "stochastic_mean_pct", "difference_pct",
    "ci_low_pct", "ci_high_pct", "margin_pct", "verdict", "energy_ratio_tuned_over_stochastic", "hardware",
)


def verdict_table(
    exp: Experiment, losses: Optional[Iterable[str]] = None, margin_pct: float = DEFAULT_MARGIN_PCT
) -> pd.DataFrame:
    """Stochastic vs tuned tau, per dataset and loss: the paired difference over the same seeds, its 95%
    interval and the verdict against ``margin_pct`` (see :mod:`greenkd_utils.analysis.verdict`), with the energy
    ratio of the two (tuned sweep over one stochastic run, mean over seeds)."""
    check_margin(margin_pct)
    rows = []
    for dataset, loss in loss_cells(exp, losses):
        tuned = [exp.tuned(dataset, s, loss) for s in exp.profile.verdict_seeds]
        stochastic = [exp.stochastic(dataset, s, loss) for s in exp.profile.verdict_seeds]
        rows.append(verdict_row(exp, tuned, stochastic, margin_pct, dataset=dataset, loss=loss))
    return pd.DataFrame(rows, columns=list(VERDICT_COLUMNS))


def verdict_row(exp: Experiment, tuned: Sequence[BilledResult], stochastic: Sequence[RunResult], margin_pct: float,
                **keys) -> Dict[str, Any]:
    """One verdict row: the paired comparison of per-seed accuracies (same seeds, same order), the energy
    ratio of the two arms (mean over seeds) and what the runs were trained on (``hardware``)."""
    verdict = paired_verdict([r.test_accuracy for r in tuned], [r.test_accuracy for r in stochastic], margin_pct)
    tuned_kwh = np.mean([exp.energy(r.energy).energy_kwh for r in tuned])
    stochastic_kwh = np.mean([exp.energy(r.energy).energy_kwh for r in stochastic])
    return {**keys, **verdict.to_dict(), "energy_ratio_tuned_over_stochastic": float(tuned_kwh / stochastic_kwh),
            "hardware": hardware_of([*tuned, *stochastic])}


def verdict_sentence(row) -> str:
    """The one-line reading of a :func:`verdict_table` row (a namedtuple from ``itertuples`` or a dict)."""
    values = row._asdict() if hasattr(row, "_asdict") else dict(row)
    fields = PairedVerdict.__dataclass_fields__
    return PairedVerdict(**{k: values[k] for k in fields}).sentence()


# ---------------------------------------------------------------------------------------------
# Writing what a notebook produces
# ---------------------------------------------------------------------------------------------
def output_dir_for(profile: str, output_dir: str | os.PathLike | None = None) -> Path:
    path = Path(output_dir) if output_dir else REPO_ROOT / "figures" / profile
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_table(table: pd.DataFrame, output_dir: str | os.PathLike, name: str, note: str = "") -> List[Path]:
    """``name.csv`` (full precision) and ``name.md`` (rounded, with ``note`` above it)."""
    output_dir = Path(output_dir)
    csv_path, md_path = output_dir / f"{name}.csv", output_dir / f"{name}.md"
    atomic_write_bytes(csv_path, table.to_csv(index=False).encode())
    markdown = table.to_markdown(index=False, floatfmt=".4g")
    atomic_write_bytes(md_path, ((note + "\n\n") if note else "").encode() + markdown.encode() + b"\n")
    return [csv_path, md_path]


def write_summary(
    exp: Experiment,
    output_dir: str | os.PathLike,
    name: str,
    tables: Dict[str, pd.DataFrame],
    verdicts: Optional[pd.DataFrame] = None,
) -> Path:
    """A small JSON beside the outputs (energy totals, constants, stochastic-vs-tuned verdicts) that
    run_all.sh folds into its manifest."""
    totals, hardware = {}, set()
    for key, table in tables.items():
        if "hardware" in table:
            hardware.update(table["hardware"])
        if "energy_kwh" in table:
            totals[key] = {
                "energy_kwh_per_seed_sum_of_rows": float(table["energy_kwh"].sum()),
                "co2_g_per_seed_sum_of_rows": float(table["co2_g"].sum()),
                "energy_source": energy_sources(table),
            }
    path = Path(output_dir) / f"{name}.summary.json"
    atomic_write_json(
        path,
        {
            "notebook": name,
            "profile": exp.profile.name,
            "pue": exp.pue,
            "carbon_intensity_g_per_kwh": exp.carbon_intensity,
            "device": exp.device,
            "results_dir": str(exp.store.root),
            "tables": totals,
            "runs_hardware": sorted(hardware),
            "verdicts": [] if verdicts is None else verdicts.to_dict(orient="records"),
        },
    )
    return path

"""The bill of a run plan before it is spent: projected FLOPs, device-hours, kWh and CO2 of the runs not yet
in the store, from a short calibration measured on this device.

Calibration. Runs of the same shape cost the same per epoch whatever their seed or fixed tau, so each shape
is trained once for :data:`CALIBRATION_EPOCHS` epochs (seed 0, a fixed tau of 4, its teacher likewise) by the
ordinary lifecycle, metered like any run, into a store of its own (``<results>/calibration/<device>/``, so a
second ``--plan`` costs nothing). A run of E epochs is then projected from the calibration's own per-epoch
history: its first epoch as the calibration's first (with what a run does once: the teacher's outputs when
they are reused, allocator warm-up), each of the E - 1 later epochs as the calibration's second (its
training, synthesis, evaluation and the checkpoint before it), and the tail as the calibration's (the last
checkpoint, the final evaluation such as a detector's mAP, the final weights). Training FLOPs are as the
task says (``Task.projected_training_flops``: E x the epoch's, except teacher outputs computed once for the
run). The energy of the calibration is measured or estimated exactly as a run's is, and the projection says
which. A single calibration epoch is not enough: it mixes the once-per-run work into the epoch, and splitting
it by FLOPs misses that a teacher pass (forward only, large batches) runs far faster per FLOP than a
training step.

What it cannot know: later epochs that cost more than the second (none of the built-in tasks does); runs a search decides as it goes (successive halving's rungs) are not in the plan. Such a search
is projected apart (:class:`SearchProjection`): the epochs Optuna's pruner is expected to train over random
rankings of the taus (:func:`~greenkd_utils.runs.successive_halving.expected_search`), each trial paying one
teacher pass, costed from the calibration of its grid's runs and set beside the full grid's cost.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from greenkd_utils.core.config import StoredConfig, TemperatureSpec
from greenkd_utils.energy.flops import gflops_millions
from greenkd_utils.energy.report import EnergyReport
from greenkd_utils.runs.execution import describe_device, resolve_device
from greenkd_utils.runs.executors import LocalExecutor
from greenkd_utils.runs.lifecycle import cached_result
from greenkd_utils.runs.plan import PlannedRun, RunPlan
from greenkd_utils.runs.registry import task_for
from greenkd_utils.runs.record import RunResult
from greenkd_utils.runs.store import RunStore
from greenkd_utils.runs.successive_halving import expected_search, truncated

CALIBRATION_TAU = 4.0
CALIBRATION_EPOCHS = 2  # the first epoch carries what a run does once; the second is every later epoch
# The bill run_all.sh writes beside the figures before training (read back by the manifest).
PLAN_FILE = "plan.json"


def calibration_config(config):
    """``config`` as its calibration: seed 0, a fixed tau of 4 where tau is fixed, :data:`CALIBRATION_EPOCHS`
    epochs, and the same for every config it holds (its teacher, its float start)."""
    changes: Dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, StoredConfig):
            changes[f.name] = calibration_config(value)
    if hasattr(config, "seed"):
        changes["seed"] = 0
    temperature = getattr(config, "temperature", None)
    if isinstance(temperature, TemperatureSpec) and temperature.mode == "fixed":
        changes["temperature"] = TemperatureSpec.fixed(CALIBRATION_TAU)
    changes["train"] = dataclasses.replace(config.train, epochs=CALIBRATION_EPOCHS)
    return config.replace(**changes)


@dataclass
class RunProjection:
    """One run's projected cost (device energy, without PUE) and what it was projected from."""

    key: str
    name: str
    task: str
    notebooks: List[str]
    epochs: int
    training_flops: float
    wall_time_s: float
    energy_kwh: float
    energy_source: str
    calibration_key: str

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class SearchProjection:
    """A successive-halving search's expected cost, and the full grid's over the same taus (both projected).
    The search's full-length runs are its grid's runs, already in the plan: this is not added to the totals."""

    notebook: str
    description: str
    n_taus: int
    epochs: int
    rungs: List[int]
    expected_epochs: float  # summed over the trials, the mean over random rankings of the taus
    epochs_low: float  # 5th and 95th percentiles over those rankings
    epochs_high: float
    training_flops: float
    grid_training_flops: float
    energy_kwh: float
    grid_energy_kwh: float
    wall_time_s: float
    grid_wall_time_s: float

    @property
    def flops_ratio_to_grid(self) -> float:
        return self.training_flops / self.grid_training_flops if self.grid_training_flops > 0 else float("nan")

    def to_dict(self) -> Dict[str, Any]:
        return {**dataclasses.asdict(self), "flops_ratio_to_grid": self.flops_ratio_to_grid}


@dataclass
class Bill:
    """The projected cost of the runs a plan still needs, with the constants that turn kWh into CO2."""

    profile: str
    device: str
    pue: float
    carbon_intensity_g_per_kwh: float
    n_runs: int
    n_cached: int
    runs: List[RunProjection] = field(default_factory=list)
    adaptive: List[str] = field(default_factory=list)
    searches: List[SearchProjection] = field(default_factory=list)
    calibration_wall_time_s: float = 0.0
    calibration_energy_kwh: float = 0.0

    @property
    def totals(self) -> Dict[str, float]:
        kwh = sum(r.energy_kwh for r in self.runs)
        return {
            "runs_to_train": len(self.runs),
            "training_flops": sum(r.training_flops for r in self.runs),
            "training_gflops_millions": gflops_millions(sum(r.training_flops for r in self.runs)),
            "device_hours": sum(r.wall_time_s for r in self.runs) / 3600.0,
            "energy_kwh": kwh,
            "energy_kwh_pue": kwh * self.pue,
            "co2_g": kwh * self.pue * self.carbon_intensity_g_per_kwh,
        }

    def by_notebook(self) -> List[Dict[str, Any]]:
        """Per notebook: runs it needs that are still to train and their projected cost (a shared run is
        counted under every notebook that needs it; the total counts it once)."""
        rows: Dict[str, Dict[str, Any]] = {}
        for run in self.runs:
            for notebook in run.notebooks:
                row = rows.setdefault(notebook, {"notebook": notebook, "runs_to_train": 0, "training_flops": 0.0,
                                                 "device_hours": 0.0, "energy_kwh": 0.0})
                row["runs_to_train"] += 1
                row["training_flops"] += run.training_flops
                row["device_hours"] += run.wall_time_s / 3600.0
                row["energy_kwh"] += run.energy_kwh
        for row in rows.values():
            row["co2_g"] = row["energy_kwh"] * self.pue * self.carbon_intensity_g_per_kwh
        return [rows[k] for k in sorted(rows)]

    def energy_sources(self) -> List[str]:
        return sorted({r.energy_source for r in self.runs})

    def to_dict(self) -> Dict[str, Any]:
        return {
            "label": "projected",
            "how": (f"each run from a {CALIBRATION_EPOCHS}-epoch calibration run of the same shape on this device: "
                    "its first epoch as the calibration's first, every later epoch as the calibration's second, "
                    "then the calibration's tail (last checkpoint, final evaluation, final weights)"),
            "profile": self.profile,
            "device": self.device,
            "pue": self.pue,
            "carbon_intensity_g_per_kwh": self.carbon_intensity_g_per_kwh,
            "n_runs_in_plan": self.n_runs,
            "n_cached": self.n_cached,
            "energy_sources": self.energy_sources(),
            "totals": self.totals,
            "by_notebook": self.by_notebook(),
            "runs": [r.to_dict() for r in self.runs],
            "adaptive_not_projected": list(self.adaptive),
            "searches": [search.to_dict() for search in self.searches],
            "calibration": {"wall_time_s": self.calibration_wall_time_s, "energy_kwh": self.calibration_energy_kwh},
        }


def _device_name(device) -> str:
    try:
        return describe_device(resolve_device(device))
    except ValueError:  # e.g. cuda asked for on a driver without a GPU: the executor's workers have it
        return str(device)


def calibration_store(results_dir: str | Path, device) -> RunStore:
    slug = re.sub(r"[^A-Za-z0-9]+", "_", _device_name(device)).strip("_").lower()
    return RunStore(Path(results_dir) / "calibration" / slug)


def project(plan: RunPlan, store: RunStore, profile: str, pue: float, carbon_intensity_g_per_kwh: float,
            device="auto", data_root=None, executor=None, progress: bool = False) -> Bill:
    """The bill of ``plan``'s runs that ``store`` lacks, calibrating each run shape once on ``device`` (the
    calibration runs are themselves a plan, trained by ``executor``: local by default, or Ray)."""
    missing = plan.missing(store)
    bill = Bill(profile, _device_name(device), pue, carbon_intensity_g_per_kwh, len(plan), len(plan) - len(missing),
                adaptive=list(plan.adaptive))
    calibrations = calibration_store(store.root, device)
    shapes = RunPlan()
    for run in missing.order():
        shapes.add(calibration_config(run.config), "calibration", **run.options)
    for search in plan.searches:
        shapes.add(calibration_config(search.grid[0]), "calibration")
    fresh = shapes.missing(calibrations)
    (executor or LocalExecutor()).run(shapes, calibrations, device=device, data_root=data_root,
                                      progress=progress).raise_if_failed()
    for run in fresh.order():
        result = cached_result(run.config, calibrations)
        bill.calibration_wall_time_s += result.wall_time_s
        bill.calibration_energy_kwh += result.energy.energy_kwh
    measured: Dict[str, RunResult] = {}
    for run in missing.order():
        config = calibration_config(run.config)
        if config.key not in measured:
            measured[config.key] = cached_result(config, calibrations)
        bill.runs.append(_projected(run, measured[config.key]))
    for search in plan.searches:
        bill.searches.append(_projected_search(search, cached_result(calibration_config(search.grid[0]), calibrations)))
    return bill


def _by_epoch(marks: List[float], total: float, epochs: int) -> float:
    """A run of ``epochs`` epochs from a calibration's cumulative cost after each epoch (``marks``) and in
    total: its first epoch, then each later one as its second, then its tail."""
    first = marks[0]
    later = marks[1] - marks[0] if len(marks) > 1 else marks[0]
    tail = max(total - marks[-1], 0.0)
    return first + (epochs - 1) * later + tail


def _projected(run, calibration: RunResult) -> RunProjection:
    task = task_for(run.config)
    epochs = int(run.config.train.epochs)
    history = calibration.history
    return RunProjection(
        key=run.key,
        name=run.name,
        task=run.task,
        notebooks=list(run.needed_by),
        epochs=epochs,
        training_flops=task.projected_training_flops(calibration.flops, epochs, len(history)),
        wall_time_s=_by_epoch([float(h["wall_time_s"]) for h in history], calibration.wall_time_s, epochs),
        energy_kwh=_by_epoch([float(h["energy_kwh"]) for h in history], calibration.energy.energy_kwh, epochs),
        energy_source=f"projected from a calibration whose energy was {calibration.energy.source}",
        calibration_key=calibration.key,
    )


def _projected_search(search, calibration: RunResult) -> SearchProjection:
    full = search.grid[0]
    epochs, n = int(full.train.epochs), len(search.grid)
    expected = expected_search(n, epochs, search.settings, orders=100)

    def trial(e: int) -> RunProjection:  # a trial that stops after e epochs (one teacher pass)
        return _projected(PlannedRun(truncated(full, e), [search.needed_by]), calibration)

    one, whole = trial(1), trial(epochs)
    two = trial(2) if epochs >= 2 else one

    def expected_cost(field_name: str) -> float:
        # Every cost is affine in the epochs a trial trains: a part once per trial, a part per epoch.
        per_epoch = getattr(two, field_name) - getattr(one, field_name)
        once = getattr(one, field_name) - per_epoch
        return n * once + expected.mean_epochs * per_epoch

    return SearchProjection(
        notebook=search.needed_by, description=search.description, n_taus=n, epochs=epochs,
        rungs=list(expected.rungs), expected_epochs=expected.mean_epochs, epochs_low=expected.epochs_low,
        epochs_high=expected.epochs_high,
        training_flops=expected_cost("training_flops"), grid_training_flops=n * whole.training_flops,
        energy_kwh=expected_cost("energy_kwh"), grid_energy_kwh=n * whole.energy_kwh,
        wall_time_s=expected_cost("wall_time_s"), grid_wall_time_s=n * whole.wall_time_s,
    )


def measured_beside_projected(projection: Dict[str, Any], store: RunStore) -> Optional[Dict[str, Any]]:
    """For a bill written before a real run (``Bill.to_dict``): the same runs as the store now has them,
    projected and measured side by side, in total and per run."""
    records = {r["key"]: r for r in store.finished_records()}
    rows, missing = [], []
    for run in projection.get("runs", []):
        record = records.get(run["key"])
        if record is None:
            missing.append(run["name"])
            continue
        rows.append({
            "name": run["name"],
            "task": run.get("task", "?"),
            "projected_energy_kwh": run["energy_kwh"],
            "measured_energy_kwh": EnergyReport.from_dict(record["energy"]).energy_kwh,
            "projected_wall_time_s": run["wall_time_s"],
            "measured_wall_time_s": float(record["wall_time_s"]),
            "projected_training_flops": run["training_flops"],
            "measured_training_flops": float(record["flops"]["training_flops"]),
        })
    if not rows:
        return None
    total = _summed(rows)
    pue, intensity = projection["pue"], projection["carbon_intensity_g_per_kwh"]
    total["projected_co2_g"] = total["projected_energy_kwh"] * pue * intensity
    total["measured_co2_g"] = total["measured_energy_kwh"] * pue * intensity
    total["projected_device_hours"] = total["projected_wall_time_s"] / 3600.0
    total["measured_device_hours"] = total["measured_wall_time_s"] / 3600.0
    by_kind = {task: _summed([r for r in rows if r["task"] == task]) for task in sorted({r["task"] for r in rows})}
    return {"runs_compared": len(rows), "runs_not_in_store": missing, "totals": total, "by_kind": by_kind,
            "runs": rows}


def _summed(rows: List[Dict[str, Any]]) -> Dict[str, float]:
    """Projected and measured sums over ``rows``, with projected / measured for energy, time and FLOPs."""
    out: Dict[str, float] = {"runs": len(rows)}
    for quantity, ratio in (("energy_kwh", "energy_ratio"), ("wall_time_s", "device_time_ratio"),
                            ("training_flops", "flops_ratio")):
        projected = sum(r[f"projected_{quantity}"] for r in rows)
        measured = sum(r[f"measured_{quantity}"] for r in rows)
        out.update({f"projected_{quantity}": projected, f"measured_{quantity}": measured,
                    ratio: projected / measured if measured > 0 else float("nan")})
    return out

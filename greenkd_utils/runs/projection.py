"""The bill of a run plan before it is spent: projected FLOPs, device-hours, kWh and CO2 of the runs not yet
in the store, from a short calibration measured on this device.

Calibration. Runs of the same shape cost the same per epoch whatever their seed or fixed tau, so each shape
is trained once for ONE epoch (seed 0, a fixed tau of 4, its teacher also one epoch) by the ordinary
lifecycle, metered like any run, into a store of its own (``<results>/calibration/<device>/``, so a second
``--plan`` costs nothing). A run of E epochs is then projected from the calibration, phase by phase: its
training FLOPs as the task says (``Task.projected_training_flops``: E x the epoch's, except teacher outputs
computed once for the run), synthesis and training energy and time in proportion to those FLOPs, checkpoint
writes E times, evaluation E times (once for a task that evaluates only after its last epoch, a detector's
mAP), the tail once. The energy of the calibration is measured or estimated exactly as
a run's is, and the projection says which.

What it cannot know: a first epoch can be slower than later ones (allocator and cuDNN warm-up), so projections
lean high; runs a search decides as it goes (successive halving's rungs) are not in the plan.
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
from greenkd_utils.runs.plan import RunPlan
from greenkd_utils.runs.registry import task_for
from greenkd_utils.runs.record import RunResult
from greenkd_utils.runs.store import RunStore

CALIBRATION_TAU = 4.0
# The bill run_all.sh writes beside the figures before training (read back by the manifest).
PLAN_FILE = "plan.json"


def calibration_config(config):
    """``config`` as its one-epoch calibration: seed 0, a fixed tau of 4 where tau is fixed, one epoch, and
    the same for every config it holds (its teacher, its float start)."""
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
    changes["train"] = dataclasses.replace(config.train, epochs=1)
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
            "how": ("each run from a one-epoch calibration run of the same shape on this device, phase by phase: "
                    "epochs x (synthesis, training, checkpoints), evaluation once per evaluating epoch"),
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
    return bill


# The calibration's phases whose work grows with the training FLOPs (a teacher pass done once for the run is in
# the first epoch only), with the number of epochs, with the number of evaluations, or not at all.
COMPUTE_PHASES = ("synthesis", "training")


def _scaled(by_phase: Dict[str, float], compute: float, epochs: int, evaluations: int) -> float:
    return (compute * sum(by_phase.get(p, 0.0) for p in COMPUTE_PHASES) + epochs * by_phase.get("checkpoints", 0.0)
            + evaluations * by_phase.get("evaluation", 0.0) + by_phase.get("other", 0.0))


def _projected(run, calibration: RunResult) -> RunProjection:
    task = task_for(run.config)
    epochs = int(run.config.train.epochs)
    evaluations = epochs if task.evaluates_every_epoch else 1
    flops = task.projected_training_flops(calibration.flops, epochs)
    compute = flops / calibration.training_flops if calibration.training_flops > 0 else float(epochs)
    energy = {phase: report.energy_kwh for phase, report in calibration.energy_by_phase.items()}
    wall = dict(calibration.wall_time_by_phase)
    return RunProjection(
        key=run.key,
        name=run.name,
        task=run.task,
        notebooks=list(run.needed_by),
        epochs=epochs,
        training_flops=flops,
        wall_time_s=_scaled(wall, compute, epochs, evaluations),
        energy_kwh=_scaled(energy, compute, epochs, evaluations),
        energy_source=f"projected from a calibration whose energy was {calibration.energy.source}",
        calibration_key=calibration.key,
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
            "projected_energy_kwh": run["energy_kwh"],
            "measured_energy_kwh": EnergyReport.from_dict(record["energy"]).energy_kwh,
            "projected_wall_time_s": run["wall_time_s"],
            "measured_wall_time_s": float(record["wall_time_s"]),
            "projected_training_flops": run["training_flops"],
            "measured_training_flops": float(record["flops"]["training_flops"]),
        })
    if not rows:
        return None
    total = {k: sum(r[k] for r in rows) for k in rows[0] if k != "name"}
    pue, intensity = projection["pue"], projection["carbon_intensity_g_per_kwh"]
    total["projected_co2_g"] = total["projected_energy_kwh"] * pue * intensity
    total["measured_co2_g"] = total["measured_energy_kwh"] * pue * intensity
    total["projected_device_hours"] = total["projected_wall_time_s"] / 3600.0
    total["measured_device_hours"] = total["measured_wall_time_s"] / 3600.0
    return {"runs_compared": len(rows), "runs_not_in_store": missing, "totals": total, "runs": rows}

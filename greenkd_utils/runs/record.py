"""The one record of a finished run (``result.json``), whatever kind of run it was.

Every run has the same core: accuracy (the task's headline metric in percent: top-1 accuracy, or mAP for a
detector), energy in total and by phase, FLOPs, wall time, the temperature it used, its per-epoch history and
its provenance. What only one kind of run has (a data-free run's teacher accuracy, a detector's per-class AP,
a QAT run's int8 size) lives in ``extras``: ``result.extras["model_size"]``.

Records written before the lifecycle was unified (their extras at the top level, a detector's mAP under
``test_map_pct``, a data-free run's energy split into ``energy_synthesis`` and ``energy_student``) load
unchanged: :meth:`RunResult.from_dict` moves each field where it belongs now.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from greenkd_utils.energy.flops import gflops_millions
from greenkd_utils.energy.report import EnergyReport
from greenkd_utils.runs.registry import task_for_config_dict, task_named

# The fields every record has; anything else a task writes goes to ``extras``.
CORE_FIELDS = (
    "key", "name", "task", "config", "test_accuracy", "val_accuracy", "energy", "energy_by_phase",
    "wall_time_s", "wall_time_by_phase", "flops", "tau", "history", "data", "versions", "device",
    "finished_at", "metered_region", "hardware",
)


@dataclass
class RunResult:
    """One finished run. ``config`` is the task's own config type (``RunConfig``, ``DFKDConfig``, ...)."""

    key: str
    name: str
    config: Any
    test_accuracy: float
    val_accuracy: float
    energy: EnergyReport
    flops: Dict[str, Any]
    wall_time_s: float
    tau: Dict[str, Any]
    history: List[Dict[str, Any]]
    data: Dict[str, Any]
    versions: Dict[str, str]
    device: str
    finished_at: str
    task: str = "classification"
    energy_by_phase: Dict[str, EnergyReport] = field(default_factory=dict)
    wall_time_by_phase: Dict[str, float] = field(default_factory=dict)
    metered_region: str = ""
    # CPU model, torch's CPU kernels and threads, GPU and driver (execution.describe_hardware); {} in records
    # written before it was kept.
    hardware: Dict[str, Any] = field(default_factory=dict)
    extras: Dict[str, Any] = field(default_factory=dict)
    run_dir: str = ""

    # -- derived numbers --------------------------------------------------------------------------
    @property
    def training_flops(self) -> float:
        return float(self.flops["training_flops"])

    @property
    def training_gflops_millions(self) -> float:
        return gflops_millions(self.training_flops)

    def flops_of(self, phase: str) -> float:
        """FLOPs of one phase (``training``, ``synthesis``, ``evaluation``); 0 for a phase the run did not have."""
        return float(self.flops.get("by_phase", {}).get(phase, 0.0))

    def energy_of(self, phase: str) -> Optional[EnergyReport]:
        """Energy of one phase of the metered region; None for a phase the run did not have or did not record."""
        return self.energy_by_phase.get(phase)

    def load_model(self, store, device="cpu"):
        """The trained network in eval mode, its weights checked against their digest and loaded with
        ``weights_only=True``."""
        return task_named(self.task).load_model(self, store, device)

    # -- serialisation ----------------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        d = {name: getattr(self, name) for name in CORE_FIELDS}
        d["config"] = self.config.to_dict()
        d["energy"] = self.energy.to_dict()
        d["energy_by_phase"] = {k: v.to_dict() for k, v in self.energy_by_phase.items()}
        d["extras"] = dict(self.extras)
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any], run_dir: str | os.PathLike = "") -> "RunResult":
        d = dict(d)
        d.pop("integrity", None)  # the store's seal
        task_type = task_named(d["task"]) if d.get("task") else task_for_config_dict(d["config"])
        d = task_type.upgrade_record(d)
        extras = dict(d.pop("extras", {}))
        for name in list(d):
            if name not in CORE_FIELDS and name != "run_dir":
                extras[name] = d.pop(name)
        d["task"] = task_type.name
        d["config"] = task_type.config_type.from_dict(d["config"])
        d["energy"] = EnergyReport.from_dict(d["energy"])
        d["energy_by_phase"] = {k: EnergyReport.from_dict(v) for k, v in d.get("energy_by_phase", {}).items()}
        d["run_dir"] = str(run_dir or d.get("run_dir", ""))
        return cls(**d, extras=extras)


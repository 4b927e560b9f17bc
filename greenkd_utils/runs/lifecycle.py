"""The life of a run, the same for every kind of run: :func:`train` is the one place that owns it.

::

    train(config, store)
      cached and intact in the store?  -> its record                          (RunStore)
      dependencies (a teacher, the float run QAT starts from) -> train() them first
      under the run's lock: seed (global torch RNG included) -> task.build() -> resume from the checkpoint
      ======================== metered region: one EnergyMeter ========================
      every epoch:  tau drawn for the epoch (temperature.for_epoch)
                    [synthesis] [training]   the task's own phases (TASK.epoch_phases)
                    [evaluation]             task.evaluate()
                    [checkpoints]            the whole state, after every epoch
      once:         [evaluation] task.finish() (final metrics)   [checkpoints] final weights and artefacts
      ================================================================================
      record: accuracy, energy in total and by phase, FLOPs by phase, tau, history, provenance

A kind of run is one :class:`Task` subclass registered with :func:`register_task` for its config type: it
builds its models and optimiser, runs one epoch of each of its phases, evaluates, counts its FLOPs and says
what its final artefacts are. It never opens the meter, draws tau, writes a checkpoint or builds the record.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, List, Mapping, Optional, Tuple, Type

import numpy as np
import torch
from tqdm.auto import tqdm

from greenkd_utils.core.temperature import TauStatistics
from greenkd_utils.energy.meter import EnergyMeter, EnergyReport
from greenkd_utils.energy.phases import PhaseMeter
from greenkd_utils.runs.execution import (
    current_concurrency,
    describe_device,
    describe_hardware,
    epoch_lr,
    library_versions,
    resolve_device,
    torch_threads_for,
)
from greenkd_utils.runs.record import RunResult
from greenkd_utils.runs.store import RunStore

log = logging.getLogger(__name__)

METERED_REGION = (
    "one EnergyMeter from the first epoch's first step to the final weights on disk: training steps (and "
    "synthesis for data-free KD), every evaluation pass the record reports, checkpoint and artefact writes; "
    "set-up before it (data loading, model construction, the FLOP probe, restoring a checkpoint) is not metered"
)

FLOP_PHASES_NOTE = (
    "training_flops = synthesis + training phases (the tables' FLOPs); evaluation passes are counted apart "
    "(flops.by_phase.evaluation) as forward FLOPs x images evaluated; counted by torch.utils.flop_counter on "
    "real passes (2 FLOPs per multiply-add); GFLOPs (M) = 1e15 FLOPs"
)

# Version of the checkpoint layout the lifecycle writes; a checkpoint of another layout is not resumed.
CHECKPOINT_LAYOUT = 2


# ---------------------------------------------------------------------------------------------
# Tasks
# ---------------------------------------------------------------------------------------------
class Task:
    """What one kind of run supplies. Subclass, set the class attributes, register with :func:`register_task`.

    The lifecycle calls, in order: ``dependencies`` (class method), ``__init__`` (data on the device, no
    randomness), ``build`` (after seeding), ``load_state_dict`` (on resume), then per epoch each phase's
    ``run_<phase>`` and ``evaluate``, and once ``finish``. ``state_dict`` must hold everything that a resumed
    run needs to continue exactly as an uninterrupted one would (the global torch RNG is the lifecycle's).
    """

    name: ClassVar[str]
    config_type: ClassVar[type]
    epoch_phases: ClassVar[Tuple[str, ...]] = ("training",)
    # Whether evaluate() runs a full evaluation after every epoch (a detector's mAP runs after the last only).
    evaluates_every_epoch: ClassVar[bool] = True
    flop_definition: ClassVar[str] = ""
    # Functions (result, ...) that read as methods of this task's RunResult, e.g. ``result.load_samples(store)``.
    result_methods: ClassVar[Dict[str, Callable[..., Any]]] = {}

    def __init__(self, config, device: torch.device, dependencies: Mapping[str, RunResult], store: RunStore,
                 data_root=None, **options):
        self.config, self.device, self.store, self.data_root = config, device, store, data_root
        self.dependencies_done = dict(dependencies)
        self.options = options
        self.history: List[Dict[str, Any]] = []  # the lifecycle's, resumed or empty, set before the first epoch

    # -- what the run needs ---------------------------------------------------------------------
    @classmethod
    def dependencies(cls, config) -> Dict[str, Any]:
        """Configs of the runs this one needs first, by role: by default the config's teacher, if it has one."""
        teacher = getattr(config, "teacher", None)
        return {"teacher": teacher} if teacher is not None else {}

    @classmethod
    def recognises(cls, config_dict: Dict[str, Any]) -> bool:
        """Whether a stored config dict (of a record written before records named their task) is this task's."""
        return False

    @classmethod
    def upgrade_record(cls, record: Dict[str, Any]) -> Dict[str, Any]:
        """A record written by an earlier version, in today's layout (unchanged by default)."""
        return record

    @property
    def temperature_spec(self):
        """The run's :class:`~greenkd_utils.core.config.TemperatureSpec`, None for a run without a KD term."""
        return getattr(self.config, "temperature", None)

    # -- the run --------------------------------------------------------------------------------
    def build(self, temperature) -> None:
        """Models, optimiser and scheduler (with ``temperature.parameters()`` if it learns), generators."""
        raise NotImplementedError

    @property
    def epochs(self) -> int:
        return int(self.config.train.epochs)

    @property
    def steps_per_epoch(self) -> int:
        """Optimiser steps per epoch (the tau draws per epoch, and the lr schedule's epoch)."""
        raise NotImplementedError

    @property
    def progress_steps_per_epoch(self) -> int:
        """Progress-bar steps per epoch (synthesis iterations count too)."""
        return self.steps_per_epoch

    @property
    def tau_batch_size(self) -> int:
        """Samples per step, for a temperature drawn per sample."""
        return int(self.config.train.batch_size)

    def run_phase(self, phase: str, epoch: int, taus, on_step: Callable[[int], None]) -> Dict[str, Any]:
        """One epoch of ``phase``; returns its history entries (``seen``: samples the student trained on)."""
        raise NotImplementedError

    def evaluate(self, epoch: int, last: bool) -> Dict[str, Any]:
        """History entries of the evaluation after epoch ``epoch`` (0-based)."""
        return {}

    def finish(self, run_dir: Path) -> Dict[str, Any]:
        """Final evaluation and artefacts: ``test_accuracy``, ``val_accuracy`` and any extras for the record.
        The final weights are saved by the lifecycle from :meth:`final_state_dict`."""
        last = self.history[-1]
        return {"test_accuracy": last["test_accuracy"], "val_accuracy": last["val_accuracy"]}

    def final_state_dict(self) -> Dict[str, torch.Tensor]:
        return self.model.state_dict()

    def flops(self) -> Dict[str, Any]:
        """``by_phase`` (FLOPs of synthesis, training and evaluation) and the counts behind them."""
        raise NotImplementedError

    @classmethod
    def projected_training_flops(cls, flops: Dict[str, Any], epochs: int) -> float:
        """Training FLOPs of a run of ``epochs`` epochs, from the ``flops`` record of a one-epoch run of the
        same shape (the bill's calibration): every epoch repeats the first by default."""
        return float(flops["training_flops"]) * epochs

    def describe_data(self) -> Dict[str, Any]:
        raise NotImplementedError

    # What a checkpoint holds of the task: attributes with a state (modules, optimisers, schedulers, random
    # generators, a synthetic pool...) and plain counters (samples seen, FLOP probes).
    checkpointed: ClassVar[Tuple[str, ...]] = ("model", "optimizer", "scheduler", "generator")
    counters: ClassVar[Tuple[str, ...]] = ("samples_seen", "images_evaluated")

    def state_dict(self) -> Dict[str, Any]:
        state = {name: _state_of(getattr(self, name)) for name in self.checkpointed}
        state.update({name: getattr(self, name) for name in self.counters})
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        for name in self.checkpointed:
            _restore(getattr(self, name), state[name])
        for name in self.counters:
            setattr(self, name, state[name])

    # -- reading a finished run -----------------------------------------------------------------
    @classmethod
    def load_model(cls, result: RunResult, store: RunStore, device="cpu") -> torch.nn.Module:
        raise NotImplementedError


def _state_of(obj) -> Any:
    return obj.get_state() if isinstance(obj, torch.Generator) else obj.state_dict()


def _restore(obj, state) -> None:
    if isinstance(obj, torch.Generator):
        obj.set_state(state.to(obj.get_state().device))
    else:
        obj.load_state_dict(state)


class StudentTask(Task):
    """A task that trains one student, distilling a finished teacher run (its ``teacher`` dependency) when it
    has one; the FLOP count follows the teacher forwards that actually ran."""

    counters = ("samples_seen", "images_evaluated", "teacher_forwards")

    @classmethod
    def projected_training_flops(cls, flops: Dict[str, Any], epochs: int) -> float:
        # Teacher outputs computed once for the run (training without augmentation) are not repeated per epoch.
        per_sample = flops.get("per_sample", {}).get("teacher_forward", 0)
        once = per_sample * flops.get("teacher_forwards", 0) if flops.get("teacher_outputs_reused") else 0.0
        return (float(flops["training_flops"]) - once) * epochs + once

    def __init__(self, config, device, dependencies, store, data_root=None, **options):
        super().__init__(config, device, dependencies, store, data_root, **options)
        self.teacher_result = dependencies.get("teacher")
        self.teacher = self.teacher_result.load_model(store, device) if self.teacher_result is not None else None


_TASKS: Dict[str, Type[Task]] = {}


def register_task(cls: Type[Task]) -> Type[Task]:
    """Class decorator: make ``cls`` the task of its ``config_type``."""
    if cls.name in _TASKS and _TASKS[cls.name] is not cls:
        raise ValueError(f"a task named {cls.name!r} is registered already")
    _TASKS[cls.name] = cls
    return cls


def _ensure_tasks_registered() -> None:
    # The task modules register themselves on import; import them all before a lookup.
    from greenkd_utils.runs import tasks  # noqa: F401


def task_named(name: str) -> Type[Task]:
    _ensure_tasks_registered()
    try:
        return _TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; valid: {', '.join(sorted(_TASKS))}") from None


def task_for(config) -> Type[Task]:
    _ensure_tasks_registered()
    for task in _TASKS.values():
        if type(config) is task.config_type:
            return task
    raise TypeError(f"no task trains a {type(config).__name__}; registered: {', '.join(sorted(_TASKS))}")


def task_for_config_dict(config_dict: Dict[str, Any]) -> Type[Task]:
    _ensure_tasks_registered()
    for task in _TASKS.values():
        if task.recognises(config_dict):
            return task
    return _TASKS["classification"]  # the paper's own runs: the configs that name no other task


# ---------------------------------------------------------------------------------------------
# The entry point
# ---------------------------------------------------------------------------------------------
def train(config, store: RunStore, device: str | torch.device | None = "auto",
          data_root: str | os.PathLike | None = None, progress: bool = True, **options) -> RunResult:
    """The finished run of ``config``: from ``store`` if it is there and intact, else trained (its
    dependencies first, each once). ``options`` go to the task and never change the numbers
    (e.g. a detector's DataLoader workers)."""
    cached = store.load_result(config)
    if cached is not None:
        return RunResult.from_dict(cached, store.run_dir(config))
    task_type = task_for(config)
    device = resolve_device(device)
    needed = {
        role: train(dependency, store, device, data_root, progress, **options)
        for role, dependency in task_type.dependencies(config).items()
    }
    task = task_type(config, device, needed, store, data_root, **options)
    # The same torch threads for a CPU run wherever it trains (execution.cpu_threads).
    with torch_threads_for(device):
        record = store.get_or_run(config, lambda run_dir: _live(task, run_dir, store, progress))
    return RunResult.from_dict(record, store.run_dir(config))


def _live(task: Task, run_dir: Path, store: RunStore, progress: bool) -> Dict[str, Any]:
    config, device = task.config, task.device
    torch.manual_seed(config.seed)
    spec = task.temperature_spec
    temperature = spec.build(config.temperature_seed).to(device) if spec is not None else None
    task.build(temperature)

    history: List[Dict[str, Any]] = []
    taus_used: List[np.ndarray] = []
    start_epoch, energy_before, wall_before = 0, {}, {}
    checkpoint = _resumable(store.load_checkpoint(run_dir), run_dir)
    if checkpoint is not None:
        torch.set_rng_state(checkpoint["torch_rng"])
        if device.type == "cuda" and checkpoint.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(checkpoint["cuda_rng"], device)
        if temperature is not None:
            temperature.load_state_dict(checkpoint["temperature"])
        task.load_state_dict(checkpoint["task"])
        history = list(checkpoint["history"])
        taus_used = [checkpoint["taus"].numpy()] if checkpoint["taus"].numel() else []
        start_epoch = int(checkpoint["epoch"]) + 1
        energy_before = {k: EnergyReport.from_dict(v) for k, v in checkpoint["energy_by_phase"].items()}
        wall_before = dict(checkpoint["wall_time_by_phase"])
        log.info("resuming %s from epoch %d", config.name, start_epoch)
    task.history = history
    concurrency = current_concurrency()
    store.log_training(config, "started", from_epoch=start_epoch, executor=concurrency.executor)

    n_steps = task.steps_per_epoch
    bar = tqdm(total=task.epochs * task.progress_steps_per_epoch, initial=start_epoch * task.progress_steps_per_epoch,
               desc=config.name, unit="step", disable=not progress, mininterval=1.0, dynamic_ncols=True)

    # ============================ the metered region begins =================================
    with EnergyMeter(device=device, host_shared=concurrency.host_shared) as meter:
        phases = PhaseMeter(meter, device, energy_before, wall_before)
        for epoch in range(start_epoch, task.epochs):
            # tau is drawn here, for the whole epoch (per batch or per sample); a learned temperature
            # computes each step's tau on the device instead.
            taus = temperature.for_epoch(epoch, n_steps, task.tau_batch_size, device) if temperature is not None else None
            row: Dict[str, Any] = {"epoch": epoch + 1, "lr": epoch_lr(epoch, n_steps, config.train)}
            for phase in task.epoch_phases:
                with phases.phase(phase):
                    row.update(task.run_phase(phase, epoch, taus, bar.update))
            with phases.phase("evaluation"):
                row.update(task.evaluate(epoch, last=epoch + 1 == task.epochs))
            used = taus.values().reshape(-1) if taus is not None else np.zeros(0)
            taus_used.append(used)
            history.append(_history_row(row, history, used, taus, phases))
            bar.set_postfix({k: f"{row[k]:.3f}" if k.endswith("loss") else f"{row[k]:.1f}"
                             for k in ("train_loss", "kd_loss", "val_accuracy", "test_accuracy") if k in row})
            with phases.phase("checkpoints"):
                store.save_checkpoint(run_dir, {
                    "layout": CHECKPOINT_LAYOUT,
                    "epoch": epoch,
                    "task": task.state_dict(),
                    "temperature": temperature.state_dict() if temperature is not None else {},
                    "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                    "history": history,
                    "taus": torch.as_tensor(np.concatenate(taus_used) if taus_used else np.zeros(0)),
                    "energy_by_phase": {k: v.to_dict() for k, v in phases.by_phase().items()},
                    "wall_time_by_phase": phases.wall_by_phase(),
                })
        with phases.phase("evaluation"):
            headline = task.finish(run_dir)
        with phases.phase("checkpoints"):
            store.save_model(run_dir, task.final_state_dict())
    # ============================ the metered region ends ===================================
    phases.close()
    bar.close()

    flops = task.flops()
    by_phase = flops["by_phase"]
    flops["training_flops"] = float(sum(v for k, v in by_phase.items() if k != "evaluation"))
    flops["definition"] = f"{task.flop_definition}; {FLOP_PHASES_NOTE}"
    all_taus = np.concatenate(taus_used) if taus_used else np.zeros(0)
    return {
        "key": config.key,
        "name": config.name,
        "task": task.name,
        "config": config.to_dict(),
        "test_accuracy": float(headline.pop("test_accuracy")),
        "val_accuracy": float(headline.pop("val_accuracy")),
        "energy": phases.total().to_dict(),
        "energy_by_phase": {k: v.to_dict() for k, v in phases.by_phase().items()},
        "wall_time_s": phases.wall_time(),
        "wall_time_by_phase": phases.wall_by_phase(),
        "metered_region": METERED_REGION,
        "flops": flops,
        "tau": describe_taus(spec, all_taus),
        "history": history,
        "data": task.describe_data(),
        "versions": library_versions(),
        "device": describe_device(device),
        "hardware": describe_hardware(device),
        "execution": concurrency.record(),
        "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "extras": headline,
    }


def _resumable(checkpoint: Optional[Dict[str, Any]], run_dir: Path) -> Optional[Dict[str, Any]]:
    if checkpoint is None:
        return None
    if checkpoint.get("layout") != CHECKPOINT_LAYOUT:
        log.warning("%s: the checkpoint was written by an earlier version of greenkd and cannot be resumed; "
                    "the run starts over from its first epoch", run_dir)
        return None
    return checkpoint


def _history_row(row: Dict[str, Any], history: List[Dict[str, Any]], used: np.ndarray, taus,
                 phases: PhaseMeter) -> Dict[str, Any]:
    seen = int(row.pop("seen", 0))
    energy = phases.total()
    if taus is not None:
        stats = TauStatistics.of(used)
        row.update({"tau_mean": stats.mean, "tau_std": stats.std, "tau_min": stats.min, "tau_max": stats.max})
    return {
        **row,
        "samples_seen": (history[-1]["samples_seen"] if history else 0) + seen,
        "energy_kwh": energy.energy_kwh,
        "energy_source": energy.source,
        "wall_time_s": phases.wall_time(),
        **(taus.record() if taus is not None else {}),
    }


def describe_taus(spec, taus: np.ndarray) -> Dict[str, Any]:
    """The record's ``tau``: the fixed value, or the range and the statistics of every tau used."""
    if spec is None:
        return {"mode": None}
    if spec.mode == "fixed":
        return {"mode": "fixed", "tau": spec.tau}
    stats = TauStatistics.of(taus)
    counts, edges = np.histogram(taus, bins=18, range=(spec.low, spec.high))
    return {
        "mode": spec.mode,
        "low": spec.low,
        "high": spec.high,
        "count": stats.count,
        "mean": stats.mean,
        "std": stats.std,
        "min": stats.min,
        "max": stats.max,
        "histogram_counts": counts.tolist(),
        "histogram_edges": edges.tolist(),
    }

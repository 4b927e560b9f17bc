"""The life of a run, the same for every kind of run: :func:`train` is the one place that owns it.

::

    train(config, store)
      cached and intact in the store?  -> its record                          (RunStore)
      dependencies (a teacher, the float run QAT starts from) -> train() them first; the teacher's network loaded
      under the run's lock: seed (global torch RNG) -> task.build() -> the run's generator, optimiser (a learned
                            temperature's parameters included) and lr schedule -> resume from the checkpoint
      ======================== metered region: one EnergyMeter ========================
      every epoch:  tau drawn for the epoch (temperature.for_epoch): one per batch, or per sample
                    [synthesis]    task.run_phase()            (a data-free run's own phase)
                    [training]     for batch in task.batches(): logits, losses = task.forward_train(batch, tau)
                                   sum(losses) -> backward -> clip -> optimiser step -> lr step   (here, TrainingSteps)
                                   teacher outputs computed once and reused when the images never change
                                   (kept in the checkpoint: a resumed or continued run does not recompute them)
                    [evaluation]   task.evaluate()  (the images it read are counted here)
                    [checkpoints]  the whole state, after every epoch
      once:         [evaluation] task.finish() (final metrics)   [checkpoints] final weights and artefacts
      ================================================================================
      record: accuracy, energy in total and by phase, FLOPs by phase, tau, history, provenance

A kind of run is one :class:`~greenkd_utils.runs.task.Task` subclass registered for its config type
(:mod:`greenkd_utils.runs.registry`): it supplies its data, what one step computes, anything it synthesises
and its FLOP accounting. It never steps an optimiser, opens the meter, draws tau, writes a checkpoint or
builds the record.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from tqdm.auto import tqdm

from greenkd_utils.core.temperature import TauStatistics, TemperatureSchedule
from greenkd_utils.energy.meter import EnergyMeter
from greenkd_utils.energy.report import EnergyReport
from greenkd_utils.energy.phases import PhaseMeter
from greenkd_utils.runs.execution import (
    current_concurrency,
    describe_device,
    describe_hardware,
    epoch_lr,
    library_versions,
    make_optimizer,
    make_scheduler,
    resolve_device,
    torch_threads_for,
)
from greenkd_utils.runs.record import RunResult
from greenkd_utils.runs.registry import task_for
from greenkd_utils.runs.store import RunStore
from greenkd_utils.runs.tasks import classification, data_free, detection, qat  # noqa: F401  (they register)
from greenkd_utils.runs.task import EpochTally, RunCounts, Task

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
CHECKPOINT_LAYOUT = 3


# ---------------------------------------------------------------------------------------------
# The entry point
# ---------------------------------------------------------------------------------------------
def train(config, store: RunStore, device: str | torch.device | None = "auto",
          data_root: str | os.PathLike | None = None, progress: bool = True, **options) -> RunResult:
    """The finished run of ``config``: from ``store`` if it is there and intact, else trained (its
    dependencies first, each once). ``options`` go to the task and never change the numbers
    (e.g. a detector's DataLoader workers)."""
    cached = cached_result(config, store)
    if cached is not None:
        return cached
    task_type = task_for(config)
    device = resolve_device(device)
    needed = {
        role: train(dependency, store, device, data_root, progress, **options)
        for role, dependency in task_type.dependencies(config).items()
    }
    task = task_type(config, device, needed, store, data_root, **options)
    if "teacher" in needed:
        task.teacher = needed["teacher"].load_model(store, device)
    # The same torch threads for a CPU run wherever it trains (execution.cpu_threads).
    with torch_threads_for(device):
        record = store.get_or_run(config, lambda run_dir: _live(task, run_dir, store, progress))
    return RunResult.from_dict(record, store.run_dir(config))


def cached_result(config, store: RunStore) -> Optional[RunResult]:
    """The finished run of ``config`` if ``store`` holds it intact (records of earlier versions included)."""
    record = store.load_result(config)
    return RunResult.from_dict(record, store.run_dir(config)) if record is not None else None


class TrainingSteps:
    """What the lifecycle holds for a task's training steps: the optimiser (a learned temperature's parameters
    included), the lr schedule, the run's random generator and the teacher-output cache."""

    def __init__(self, task: Task, temperature, counts: RunCounts):
        settings = task.train_settings
        self.task, self.counts = task, counts
        self.optimizer = make_optimizer(task.model, settings, task.plan,
                                        temperature.parameters() if temperature is not None else ())
        self.scheduler = make_scheduler(self.optimizer, task.steps_per_epoch, settings)
        self.clip_norm = getattr(settings, "grad_clip_norm", None)
        self.teacher_cache: Optional[torch.Tensor] = None

    def state_dict(self) -> Dict[str, Any]:
        state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "generator": self.task.generator.get_state()}
        if self.teacher_cache is not None:
            # Kept with the state: a resumed or continued run (a successive-halving rung) reuses the one pass.
            state["teacher_outputs"] = self.teacher_cache.detach().cpu()
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if "generator" in state:  # a data-free run of layout 2 kept none: its batches use per-epoch streams
            self.task.generator.set_state(state["generator"].to(self.task.generator.get_state().device))
        if state.get("teacher_outputs") is not None:
            self.teacher_cache = state["teacher_outputs"].to(self.task.device)

    def epoch(self, epoch: int, taus, on_step: Callable[[int], None]) -> Dict[str, Any]:
        """One epoch of training steps: the task computes each step's losses, the lifecycle steps."""
        task, counts = self.task, self.counts
        task.model.train()
        if task.caches_teacher_outputs and task.teacher is not None and not task.augments and self.teacher_cache is None:
            # Without augmentation the teacher sees the same images every epoch: one pass serves the run.
            self.teacher_cache = task.all_teacher_outputs()
            counts.teacher_forwards += int(self.teacher_cache.shape[0])
            counts.teacher_passes += 1
            counts.teacher_outputs_reused = True
        tally = EpochTally(task.device)
        for step, batch in enumerate(task.batches(epoch)):
            cached = self.teacher_cache[batch.index.to(self.teacher_cache.device)] if self.teacher_cache is not None else None
            logits, losses = task.forward_train(batch, taus[step] if taus is not None else None, cached)
            loss = _sum(losses)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(task.model.parameters(), self.clip_norm)
            self.optimizer.step()
            self.scheduler.step()
            if cached is None and task.teacher is not None:
                counts.teacher_forwards += batch.size
            tally.add(batch, logits, losses, loss)
            on_step(1)
        counts.samples_seen += tally.seen
        return {**task.summarise_epoch(tally), "seen": tally.seen}


def _sum(losses: Dict[str, torch.Tensor]) -> torch.Tensor:
    # Left to right from the first term, not sum() (which starts from 0): one loss term is returned as it is,
    # and the additions are those a task would write by hand, so the numbers are bit for bit the same.
    terms = iter(losses.values())
    total = next(terms)
    for term in terms:
        total = total + term
    return total


def begin(task: Task) -> Tuple[Optional[TemperatureSchedule], RunCounts, "TrainingSteps"]:
    """Seed the run, build its temperature and its task, then its optimiser, lr schedule and generator: a task
    ready for its first step (the start of every run; benchmarks time ``TrainingSteps.epoch`` from here)."""
    torch.manual_seed(task.config.seed)
    spec = task.temperature_spec
    temperature = spec.build(task.config.temperature_seed).to(task.device) if spec is not None else None
    task.build()
    task.generator = torch.Generator(device="cpu" if task.generator_on_cpu else task.device).manual_seed(task.config.seed)
    counts = RunCounts()
    return temperature, counts, TrainingSteps(task, temperature, counts)


def _live(task: Task, run_dir: Path, store: RunStore, progress: bool) -> Dict[str, Any]:
    config, device = task.config, task.device
    spec = task.temperature_spec
    temperature, counts, steps = begin(task)

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
        steps.load_state_dict(checkpoint["steps"])
        counts.load_state_dict(checkpoint["counts"])
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
            # tau is drawn here, a whole epoch of them at once: one per batch (or per sample); a learned
            # temperature computes each step's tau on the device instead.
            taus = temperature.for_epoch(epoch, n_steps, task.tau_batch_size, device) if temperature is not None else None
            row: Dict[str, Any] = {"epoch": epoch + 1, "lr": epoch_lr(epoch, n_steps, task.train_settings)}
            with task.epoch_context(epoch):
                for phase in task.epoch_phases:
                    with phases.phase(phase):
                        if phase == "training":
                            row.update(steps.epoch(epoch, taus, bar.update))
                        else:
                            row.update(task.run_phase(phase, epoch, bar.update))
                with phases.phase("evaluation"):
                    evaluation = task.evaluate(epoch, last=epoch + 1 == task.epochs)
                    counts.images_evaluated += evaluation.images
                    row.update(evaluation.entries)
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
                    "steps": steps.state_dict(),
                    "counts": counts.state_dict(),
                    "temperature": temperature.state_dict() if temperature is not None else {},
                    "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                    "history": history,
                    "taus": torch.as_tensor(np.concatenate(taus_used) if taus_used else np.zeros(0)),
                    "energy_by_phase": {k: v.to_dict() for k, v in phases.by_phase().items()},
                    "wall_time_by_phase": phases.wall_by_phase(),
                })
        with phases.phase("evaluation"):
            final = task.finish(run_dir)
            counts.images_evaluated += final.images
        with phases.phase("checkpoints"):
            store.save_model(run_dir, task.final_state_dict())
    # ============================ the metered region ends ===================================
    phases.close()
    bar.close()

    headline = dict(final.entries)
    flops = task.flops(counts)
    if task.caches_teacher_outputs:
        flops["teacher_outputs_reused"] = counts.teacher_outputs_reused
        flops["teacher_passes"] = counts.teacher_passes
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
    if checkpoint.get("layout") == 2:
        checkpoint = _from_layout_2(checkpoint)
    if checkpoint.get("layout") != CHECKPOINT_LAYOUT:
        log.warning("%s: the checkpoint was written by an earlier version of greenkd and cannot be resumed; "
                    "the run starts over from its first epoch", run_dir)
        return None
    return checkpoint


def _from_layout_2(checkpoint: Dict[str, Any]) -> Dict[str, Any]:
    """A checkpoint of layout 2, where the task held its optimiser, lr schedule, generator and counts, in
    today's layout: an interrupted run of an earlier version resumes instead of starting over."""
    task = dict(checkpoint["task"])
    steps = {name: task.pop(name) for name in ("optimizer", "scheduler", "generator") if name in task}
    counts = {name: task.pop(name) for name in ("samples_seen", "images_evaluated", "teacher_forwards") if name in task}
    return {**checkpoint, "layout": CHECKPOINT_LAYOUT, "task": task, "steps": steps, "counts": counts}


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

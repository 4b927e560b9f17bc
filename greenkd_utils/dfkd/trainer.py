"""Data-free KD runs: synthesize, then distil on the synthetic pool, one round per epoch.

``train_dfkd(config, store)`` is the entry point, like ``engine.train_run``: a
cached run is loaded, a missing one is trained (its teacher first, through the
ordinary run store) under one ``EnergyMeter`` with checkpoints after every
epoch. Each epoch is one synthesis round (its images join the pool) followed by
``kd_steps`` student steps on batches drawn from the whole pool.

The student never sees a real training image: the real training split is
removed from the data before the loop starts (:func:`without_training_images`);
only the held-out validation split (to choose tau for the tuned baseline) and
the test split (to score the student) remain, and they are used for evaluation
passes only.

Synthesis and student training are accounted separately: energy as the
difference of meter snapshots taken at the phase boundaries, FLOPs from the
counted passes of each phase. ``energy`` and ``training_flops`` are the totals.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, Iterable, List, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from ..augment import BatchAugment, standardize
from ..carbon import ComponentEnergy, EnergyMeter, EnergyReport
from ..config import TemperatureSpec
from ..engine import (
    DeviceData,
    ExecutionPlan,
    accuracy_tensor,
    describe_device,
    describe_taus,
    library_versions,
    lr_factor,
    make_optimizer,
    prepare_data,
    resolve_device,
    train_run,
)
from ..flops import gflops_millions, kd_step_flops
from ..losses import kd_loss
from ..models import create_model
from ..store import RunStore, atomic_torch_save, safe_torch_load
from ..sweep import TunedResult, choose_on_validation
from ..temperature import TauStatistics
from .config import DFKDConfig
from .pool import SyntheticPool
from .synthesizers import make_synthesizer

log = logging.getLogger(__name__)

SAMPLES_FILE = "samples.pt"

FLOP_DEFINITION = (
    "DFKD FLOPs = synthesis FLOPs + student FLOPs. Synthesis: rounds x (iterations x FLOPs of one "
    "optimisation step + the round's closing passes), a step counted on its real passes (teacher forward and "
    "backward to the images or generator, student forward and backward for the adversarial term, and for CMI "
    "the generator, the second teacher pass of the contrastive view and the projection head). Student: samples "
    "seen x (teacher forward + student forward + student backward) per sample. Counted by "
    "torch.utils.flop_counter (2 FLOPs per multiply-add); GFLOPs (M) = 1e15 FLOPs; evaluation passes not included"
)

# Independent random streams per epoch, so a resumed run draws what an uninterrupted one would.
_SYNTHESIS_STREAM, _KD_STREAM = 1, 2


def stream_seed(seed: int, epoch: int, stream: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1)[0])


# ---------------------------------------------------------------------------------------------
# The record
# ---------------------------------------------------------------------------------------------
@dataclass
class DFKDResult:
    """One finished data-free KD run, as stored in ``result.json``.

    ``energy`` is the run's total; ``energy_synthesis`` and ``energy_student`` split it by phase
    (the student phase includes the per-epoch evaluation passes). The same holds for FLOPs.
    """

    key: str
    name: str
    config: DFKDConfig
    test_accuracy: float
    val_accuracy: float
    teacher_test_accuracy: float
    energy: EnergyReport
    energy_synthesis: EnergyReport
    energy_student: EnergyReport
    flops: Dict[str, Any]
    wall_time_s: float
    wall_time_synthesis_s: float
    tau: Dict[str, Any]
    history: List[Dict[str, Any]]
    data: Dict[str, Any]
    pool: Dict[str, Any]
    versions: Dict[str, str]
    device: str
    finished_at: str
    run_dir: str = ""

    @property
    def training_flops(self) -> float:
        return float(self.flops["training_flops"])

    @property
    def synthesis_flops(self) -> float:
        return float(self.flops["synthesis_flops"])

    @property
    def student_flops(self) -> float:
        return float(self.flops["student_flops"])

    @property
    def training_gflops_millions(self) -> float:
        return gflops_millions(self.training_flops)

    @property
    def synthesis_gflops_millions(self) -> float:
        return gflops_millions(self.synthesis_flops)

    @property
    def student_gflops_millions(self) -> float:
        return gflops_millions(self.student_flops)

    def to_dict(self) -> Dict[str, Any]:
        d = dict(self.__dict__)
        d["config"] = self.config.to_dict()
        for name in ("energy", "energy_synthesis", "energy_student"):
            d[name] = getattr(self, name).to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any], run_dir: str | os.PathLike = "") -> "DFKDResult":
        d = dict(d)
        d["config"] = DFKDConfig.from_dict(d["config"])
        for name in ("energy", "energy_synthesis", "energy_student"):
            d[name] = EnergyReport.from_dict(d[name])
        d["run_dir"] = str(run_dir or d.get("run_dir", ""))
        return cls(**d)

    def load_model(self, store: RunStore, device: str | torch.device = "cpu") -> torch.nn.Module:
        """The distilled student in eval mode, weights loaded with ``weights_only=True``."""
        model = create_model(self.config.model, self.data["num_classes"], self.data["in_channels"])
        model.load_state_dict(store.load_state_dict(self.config))
        return model.to(device).eval()

    def load_samples(self, store: RunStore) -> Dict[str, torch.Tensor]:
        """The last round's synthesized images (uint8) and the classes they were made for."""
        return safe_torch_load(store.run_dir(self.config) / SAMPLES_FILE)


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
def without_training_images(data: DeviceData) -> DeviceData:
    """``data`` with its training split emptied: what a data-free student may be given."""
    x, y = data.train
    return dataclasses.replace(data, train=(x[:0], y[:0]))


def energy_between(later: EnergyReport, earlier: Optional[EnergyReport]) -> EnergyReport:
    """The energy spent between two snapshots of one meter (or two cumulative reports), per component."""
    if earlier is None:
        return later
    components = {}
    for name, comp in later.components.items():
        before = earlier.components.get(name)
        spent = comp.energy_kwh - (before.energy_kwh if before is not None else 0.0)
        components[name] = ComponentEnergy(name, max(0.0, spent), comp.source, comp.method)
    return EnergyReport(
        duration_s=max(0.0, later.duration_s - earlier.duration_s),
        components=components,
        pue=later.pue,
        carbon_intensity_g_per_kwh=later.carbon_intensity_g_per_kwh,
    )


def _add(total: Optional[EnergyReport], part: EnergyReport) -> EnergyReport:
    return part if total is None else total + part


def _sync(device: torch.device) -> None:
    # Phase boundaries must not let queued GPU work spill into the other phase's energy.
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------
def train_dfkd(
    config: DFKDConfig,
    store: RunStore,
    device: str | torch.device | None = "auto",
    data_root: str | os.PathLike | None = None,
    progress: bool = True,
) -> DFKDResult:
    """Load ``config``'s finished run from ``store``, or train it (and its teacher, once)."""
    cached = store.load_result(config)
    if cached is not None:
        return DFKDResult.from_dict(cached, store.run_dir(config))
    device = resolve_device(device)
    teacher_result = train_run(config.teacher, store, device=device, data_root=data_root, progress=progress)
    teacher = teacher_result.load_model(store, device)
    data = without_training_images(prepare_data(config, device, None if data_root is None else str(data_root)))
    record = store.get_or_run(
        config,
        lambda run_dir: _train_dfkd(config, run_dir, data, teacher, teacher_result.test_accuracy, device, store, progress),
    )
    return DFKDResult.from_dict(record, store.run_dir(config))


def tuned_dfkd(
    base: DFKDConfig,
    taus: Iterable[float],
    store: RunStore,
    device="auto",
    data_root=None,
    progress: bool = True,
) -> TunedResult:
    """One full data-free KD run (synthesis included) per fixed tau; the winner chosen on validation."""
    if base.val_fraction <= 0:
        raise ValueError("a tau sweep needs val_fraction > 0: tau is chosen on validation, never on test")
    runs = [
        train_dfkd(base.replace(temperature=TemperatureSpec.fixed(float(tau))), store, device, data_root, progress)
        for tau in taus
    ]
    chosen = choose_on_validation(runs)
    log.info("tuned DFKD sweep %s: tau=%g chosen on validation (%.2f%%)", base.name, chosen.config.temperature.tau, chosen.val_accuracy)
    return TunedResult(runs=runs, chosen=chosen)


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------
def _train_dfkd(
    config: DFKDConfig,
    run_dir: Path,
    data: DeviceData,
    teacher: torch.nn.Module,
    teacher_test_accuracy: float,
    device: torch.device,
    store: RunStore,
    progress: bool,
) -> Dict[str, Any]:
    if data.train[1].numel() != 0:
        raise ValueError("a data-free KD student must not be given real training images")
    settings, synthesis = config.train, config.synthesis
    plan = ExecutionPlan.for_run(settings, device)
    torch.manual_seed(config.seed)
    student = plan.prepare_model(create_model(config.model, data.num_classes, data.in_channels))
    teacher = teacher.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    synthesizer = make_synthesizer(
        synthesis, teacher, student, data.num_classes, data.input_shape, data.mean, data.std, device
    )
    pool = SyntheticPool(data.input_shape, device)
    optimizer = make_optimizer(student, settings, plan)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, config.kd_steps, settings))
    temperature = config.temperature.build(config.temperature_seed)
    augment = BatchAugment(settings.augment)
    per_sample = kd_step_flops(teacher, student, data.input_shape)

    history: List[Dict[str, Any]] = []
    taus_used: List[np.ndarray] = []
    start_epoch = 0
    energy_before = synthesis_energy_before = None
    wall_before = synthesis_wall_before = 0.0
    flops_per_step = flops_close = None
    samples_seen = 0
    checkpoint = store.load_checkpoint(run_dir)
    if checkpoint is not None:
        student.load_state_dict(checkpoint["student"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        temperature.load_state_dict(checkpoint["temperature"])
        synthesizer.load_state_dict(checkpoint["synthesizer"])
        pool.load_state_dict(checkpoint["pool"])
        history = list(checkpoint["history"])
        taus_used = [checkpoint["taus"].numpy()] if checkpoint["taus"].numel() else []
        start_epoch = int(checkpoint["epoch"]) + 1
        energy_before = EnergyReport.from_dict(checkpoint["energy"])
        synthesis_energy_before = EnergyReport.from_dict(checkpoint["energy_synthesis"])
        wall_before = float(checkpoint["wall_time_s"])
        synthesis_wall_before = float(checkpoint["wall_time_synthesis_s"])
        flops_per_step, flops_close = checkpoint["flops_per_step"], checkpoint["flops_close"]
        samples_seen = int(checkpoint["samples_seen"])
        log.info("resuming %s from epoch %d", config.name, start_epoch)

    steps_per_epoch = synthesis.iterations + config.kd_steps
    bar = tqdm(
        total=settings.epochs * steps_per_epoch,
        initial=start_epoch * steps_per_epoch,
        desc=config.name,
        unit="step",
        disable=not progress,
        mininterval=1.0,
        dynamic_ncols=True,
    )
    started = time.perf_counter()
    synthesis_wall = 0.0
    synthesis_energy: Optional[EnergyReport] = None
    last_round = None
    with EnergyMeter(device=device) as meter:
        for epoch in range(start_epoch, settings.epochs):
            # -- 1. synthesis: one round, its images join the pool ---------------------------------
            _sync(device)
            before, t0 = meter.snapshot(), time.perf_counter()
            last_round = synthesizer.synthesize(
                stream_seed(config.seed, epoch, _SYNTHESIS_STREAM), count_flops=flops_per_step is None
            )
            if last_round.flops_per_step is not None:
                flops_per_step, flops_close = last_round.flops_per_step, last_round.flops_close
            pool.add(last_round.images, last_round.targets)
            _sync(device)
            synthesis_wall += time.perf_counter() - t0
            synthesis_energy = _add(synthesis_energy, energy_between(meter.snapshot(), before))
            bar.update(synthesis.iterations)

            # -- 2. the student distils on the whole pool -----------------------------------------
            student.train()
            generator = torch.Generator(device=device).manual_seed(stream_seed(config.seed, epoch, _KD_STREAM))
            epoch_taus = temperature.sample_many(config.kd_steps)
            taus_device = torch.as_tensor(epoch_taus, dtype=torch.float32, device=device)
            loss_sum = torch.zeros((), device=device)
            agree = torch.zeros((), device=device)
            seen = 0
            for step in range(config.kd_steps):
                idx = pool.sample_indices(settings.batch_size, generator)
                images = augment(pool.images[idx].float() / 255.0, generator)
                x = plan.prepare_batch(standardize(images, data.mean, data.std))
                with plan.autocast():
                    with torch.no_grad():
                        teacher_logits = teacher(x)
                    student_logits = student(x)
                # Synthetic images have no labels: the teacher's class stands in where alpha < 1.
                pseudo_labels = teacher_logits.argmax(1)
                loss = kd_loss(
                    config.loss,
                    student_logits.float(),
                    teacher_logits.float(),
                    pseudo_labels,
                    taus_device[step],
                    alpha=config.alpha,
                    kl_reduction=config.kl_reduction,
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                loss_sum += loss.detach() * idx.numel()
                agree += (student_logits.detach().argmax(1) == pseudo_labels).sum()
                seen += idx.numel()
                bar.update(1)
            samples_seen += seen

            # -- 3. evaluation on held-out real images (never trained on) ------------------------
            val_acc = accuracy_tensor(student, *data.val, data.mean, data.std, plan)
            test_acc = accuracy_tensor(student, *data.test, data.mean, data.std, plan)
            kd_loss_mean, agreement, val_acc, test_acc = torch.stack(
                [loss_sum / seen, agree * 100.0 / seen, val_acc, test_acc]
            ).tolist()
            taus_used.append(epoch_taus)
            energy = _add(energy_before, meter.snapshot())
            energy_synthesis = _add(synthesis_energy_before, synthesis_energy)
            tau_stats = TauStatistics.of(epoch_taus)
            history.append(
                {
                    "epoch": epoch + 1,
                    "lr": optimizer.param_groups[0]["lr"],
                    "pool_size": len(pool),
                    "kd_loss": kd_loss_mean,
                    "student_teacher_agreement": agreement,
                    "val_accuracy": val_acc,
                    "test_accuracy": test_acc,
                    "tau_mean": tau_stats.mean,
                    "tau_std": tau_stats.std,
                    **{f"synthesis_{k}": v for k, v in last_round.stats.items()},
                    "samples_seen": samples_seen,
                    "energy_kwh": energy.energy_kwh,
                    "energy_synthesis_kwh": energy_synthesis.energy_kwh,
                    "energy_source": energy.source,
                    "wall_time_s": wall_before + time.perf_counter() - started,
                    "wall_time_synthesis_s": synthesis_wall_before + synthesis_wall,
                }
            )
            bar.set_postfix(pool=len(pool), loss=f"{kd_loss_mean:.3f}", val=f"{val_acc:.1f}", test=f"{test_acc:.1f}")
            store.save_checkpoint(
                run_dir,
                {
                    "epoch": epoch,
                    "student": student.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "temperature": temperature.state_dict(),
                    "synthesizer": synthesizer.state_dict(),
                    "pool": pool.state_dict(),
                    "history": history,
                    "taus": torch.as_tensor(np.concatenate(taus_used)),
                    "energy": energy.to_dict(),
                    "energy_synthesis": energy_synthesis.to_dict(),
                    "wall_time_s": history[-1]["wall_time_s"],
                    "wall_time_synthesis_s": history[-1]["wall_time_synthesis_s"],
                    "flops_per_step": flops_per_step,
                    "flops_close": flops_close,
                    "samples_seen": samples_seen,
                },
            )
    bar.close()
    energy = _add(energy_before, meter.report)
    energy_synthesis = _add(synthesis_energy_before, synthesis_energy) if synthesis_energy else synthesis_energy_before
    store.save_model(run_dir, student.state_dict())
    # The newest round's images, for a look at what the student learned from.
    newest = slice(max(0, len(pool) - synthesis.batch_size), len(pool))
    atomic_torch_save({"images": pool.images[newest].cpu(), "targets": pool.targets[newest].cpu()}, run_dir / SAMPLES_FILE)

    rounds = settings.epochs
    synthesis_flops = float(rounds) * (synthesis.iterations * float(flops_per_step) + float(flops_close))
    student_flops = float(samples_seen) * float(per_sample.total)
    last = history[-1]
    all_taus = np.concatenate(taus_used)
    return {
        "key": config.key,
        "name": config.name,
        "config": config.to_dict(),
        "test_accuracy": last["test_accuracy"],
        "val_accuracy": last["val_accuracy"],
        "teacher_test_accuracy": float(teacher_test_accuracy),
        "energy": energy.to_dict(),
        "energy_synthesis": energy_synthesis.to_dict(),
        "energy_student": energy_between(energy, energy_synthesis).to_dict(),
        "flops": {
            "synthesis_flops": synthesis_flops,
            "student_flops": student_flops,
            "training_flops": synthesis_flops + student_flops,
            "synthesis_rounds": rounds,
            "synthesis_iterations_per_round": synthesis.iterations,
            "synthesis_flops_per_step": int(flops_per_step),
            "synthesis_flops_round_close": int(flops_close),
            "student_per_sample": per_sample.to_dict(),
            "student_samples_seen": samples_seen,
            "definition": FLOP_DEFINITION,
        },
        "wall_time_s": wall_before + time.perf_counter() - started,
        "wall_time_synthesis_s": synthesis_wall_before + synthesis_wall,
        # describe_taus reads a KD run's temperature; the DFKD student's loss is a KD loss like any other.
        "tau": describe_taus(SimpleNamespace(role="kd", temperature=config.temperature), all_taus),
        "history": history,
        "data": {**data.describe(), "n_train_images_seen_by_student": 0},
        "pool": {"size": len(pool), "class_counts": pool.class_counts(data.num_classes)},
        "versions": library_versions(),
        "device": describe_device(device),
        "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }

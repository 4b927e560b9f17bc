"""Training SSD detectors: the teacher with SSD's loss, students with SSD's loss plus KD on anchor logits.

``train_detection_run(config, store)`` is the entry point, the detection
counterpart of :func:`greenkd_utils.engine.train_run`: it returns the cached
run from the :class:`~greenkd_utils.store.RunStore`, or trains it under an
:class:`~greenkd_utils.carbon.EnergyMeter` with FLOPs counted from real passes
(:mod:`greenkd_utils.flops`), and stores a result record whose energy, FLOP and
tau fields read like the classification runs' (so the shared table code
summarises both).

The KD student's objective is

    SSD loss (localisation + classification over positives and hard negatives)
    + alpha * D(student logits, teacher logits; tau)

where D is a registered KD loss's distillation term (``hkd``, ``cmc``,
``dml``) over the class logits of exactly the anchors SSD's classification
term used in that batch, and tau is fixed or drawn per batch.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

import numpy as np
import torch
from tqdm.auto import tqdm

from ..augment import standardize
from ..carbon import EnergyMeter, EnergyReport
from ..config import TemperatureSpec
from ..engine import ExecutionPlan, describe_device, describe_taus, library_versions, lr_factor, resolve_device
from ..flops import gflops_millions, kd_step_flops, train_step_flops
from ..store import RunStore
from ..sweep import TunedResult, choose_on_validation
from ..temperature import TauStatistics
from .batches import iterate_batches
from .config import DetectionRunConfig, DetectionTrainSettings
from .data import DetectionDataset, DetectionSplits, load_detection_data
from .evaluation import DetectionMetrics, evaluate_model
from .loss import anchor_distillation, ssd_loss
from .models import SSDDetector, create_detector
from .shapes import ShapesSettings

log = logging.getLogger(__name__)

FLOP_DEFINITION = (
    "training FLOPs = images seen x (student forward + student backward) + teacher forwards that ran x "
    "teacher forward, per image, counted by torch.utils.flop_counter on real passes of the whole detector "
    "(backbone and head; 2 FLOPs per multiply-add); anchor matching, the loss, NMS and evaluation are not "
    "counted; GFLOPs (M) = 1e15 FLOPs"
)

# A checkpoint is written after an epoch when this long has passed since the last one: long runs lose at
# most a few minutes, and second-long demo epochs do not spend their time writing weights.
CHECKPOINT_INTERVAL_S = 60.0


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------
@dataclass
class DetectionRunResult:
    """The record of one finished detection run (``result.json``).

    ``test_accuracy`` and ``val_accuracy`` are the mAP in percent under the names the shared table
    and sweep code read (:func:`greenkd_utils.experiments.summarise`, :func:`~greenkd_utils.sweep.choose_on_validation`).
    """

    key: str
    name: str
    config: DetectionRunConfig
    test_map_pct: float
    val_map_pct: float
    test_metrics: Dict[str, Any]
    energy: EnergyReport
    flops: Dict[str, Any]
    wall_time_s: float
    tau: Dict[str, Any]
    history: List[Dict[str, Any]]
    data: Dict[str, Any]
    versions: Dict[str, str]
    device: str
    finished_at: str
    run_dir: str = ""

    @property
    def test_accuracy(self) -> float:
        return self.test_map_pct

    @property
    def val_accuracy(self) -> float:
        return self.val_map_pct

    @property
    def training_flops(self) -> float:
        return float(self.flops["training_flops"])

    @property
    def training_gflops_millions(self) -> float:
        return gflops_millions(self.training_flops)

    @classmethod
    def from_dict(cls, d: Dict[str, Any], run_dir: str | os.PathLike = "") -> "DetectionRunResult":
        d = dict(d)
        d["config"] = DetectionRunConfig.from_dict(d["config"])
        d["energy"] = EnergyReport.from_dict(d["energy"])
        d["run_dir"] = str(run_dir or d.get("run_dir", ""))
        return cls(**d)

    def load_model(self, store: RunStore, device="cpu") -> SSDDetector:
        """The trained detector in eval mode (weights loaded with ``weights_only=True``)."""
        model = build_model(self.config, self.data["num_classes"])
        model.load_state_dict(store.load_state_dict(self.config))
        return model.to(device).eval()


def build_model(config: DetectionRunConfig, num_classes: int) -> SSDDetector:
    return create_detector(config.model, num_classes, width=config.width, anchors=config.anchors)


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=2)
def _load_cached(dataset: str, image_size: int, root: Optional[str], shapes: Optional[ShapesSettings]) -> DetectionSplits:
    # Decoding VOC takes a minute or two: once per process.
    return load_detection_data(dataset, image_size, root=root, shapes=shapes)


# The validation split is the same for every run of a dataset, whatever its seed.
VALIDATION_SPLIT_SEED = 0


@dataclass(eq=False)
class DetectionData:
    train: DetectionDataset
    val: DetectionDataset
    test: DetectionDataset
    mean: torch.Tensor
    std: torch.Tensor

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    def describe(self) -> Dict[str, Any]:
        return {
            "num_classes": self.num_classes,
            "class_names": list(self.train.class_names),
            "image_size": self.train.image_size,
            "n_train": len(self.train),
            "n_val": len(self.val),
            "n_test": len(self.test),
            "n_train_objects": self.train.num_objects,
        }


def prepare_detection_data(config: DetectionRunConfig, data_root=None) -> DetectionData:
    splits = _load_cached(config.dataset, config.image_size, None if data_root is None else str(data_root), config.shapes)
    train, val = splits.train.split_validation(config.val_fraction, seed=VALIDATION_SPLIT_SEED)
    return DetectionData(
        train=train,
        val=val,
        test=splits.test,
        mean=torch.tensor(splits.mean, dtype=torch.float32),
        std=torch.tensor(splits.std, dtype=torch.float32),
    )


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------
def execution_plan(settings: DetectionTrainSettings, device: torch.device) -> ExecutionPlan:
    """The classification runs' plan, plus channels_last on the CPU, where it makes the depthwise
    convolutions of MobileNetV2 and VGG's convolutions about 1.5x faster (oneDNN's preferred layout)."""
    plan = ExecutionPlan.for_run(settings, device)
    if device.type == "cpu":
        plan = dataclasses.replace(plan, channels_last=True)
    return plan


def make_optimizer(model: torch.nn.Module, settings: DetectionTrainSettings, plan: ExecutionPlan):
    extra = {"fused": True} if plan.fused_optimizer else {}
    if settings.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay, **extra)
    return torch.optim.SGD(
        model.parameters(), lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay, **extra
    )


@torch.no_grad()
def teacher_logits_for(teacher: SSDDetector, images_u8: torch.Tensor, mean, std, plan: ExecutionPlan, batch_size: int = 128) -> torch.Tensor:
    """The teacher's class logits (N, A, C + 1) for un-augmented images, computed once per run."""
    out = []
    for start in range(0, images_u8.shape[0], batch_size):
        x = plan.prepare_batch(standardize(images_u8[start : start + batch_size].float() / 255.0, mean, std))
        with plan.autocast():
            out.append(teacher(x)["cls_logits"].float())
    return torch.cat(out)


def train_detection_run(
    config: DetectionRunConfig,
    store: RunStore,
    device: str | torch.device | None = "auto",
    data_root=None,
    progress: bool = True,
    num_workers: int = 0,
    eval_every: int = 0,
) -> DetectionRunResult:
    """Load ``config``'s finished run from ``store``, or train it (and its teacher, once).

    ``num_workers``: DataLoader workers for the ``ssd`` augmentation. ``eval_every``: also record the
    validation mAP in the history every that many epochs (0: only after the last epoch). Neither changes
    the trained weights, so neither is part of the config.
    """
    cached = store.load_result(config)
    if cached is not None:
        return DetectionRunResult.from_dict(cached, store.run_dir(config))
    device = resolve_device(device)
    teacher = None
    if config.role == "kd":
        teacher_result = train_detection_run(config.teacher, store, device, data_root, progress, num_workers)
        teacher = teacher_result.load_model(store, device)
    data = prepare_detection_data(config, data_root)
    run = lambda run_dir: _Run(config, run_dir, data, teacher, device, store, num_workers).train(progress, eval_every)
    record = store.get_or_run(config, run)
    return DetectionRunResult.from_dict(record, store.run_dir(config))


class _Run:
    """One training run: the model, its optimiser and schedule, the temperature, and where it stands."""

    def __init__(self, config, run_dir: Path, data: DetectionData, teacher, device: torch.device, store: RunStore, num_workers: int):
        self.config, self.run_dir, self.data, self.device, self.store = config, run_dir, data, device, store
        self.settings = settings = config.train
        self.num_workers = num_workers
        self.plan = execution_plan(settings, device)
        torch.manual_seed(config.seed)
        self.model = self.plan.prepare_model(build_model(config, data.num_classes))
        self.teacher = self.plan.prepare_model(teacher).eval() if teacher is not None else None
        self.step_model = torch.compile(self.model) if self.plan.compile else self.model
        self.mean, self.std = data.mean.to(device), data.std.to(device)
        self.anchors = self.model.anchors(config.image_size, device)
        if self.teacher is not None and not torch.equal(self.teacher.anchors(config.image_size, device), self.anchors):
            raise ValueError("the teacher's anchors differ from the student's: per-anchor logits cannot be distilled")
        # The "ssd" augmentation reads the images on the host, in DataLoader workers.
        on_device = settings.augment != "ssd"
        self.train_images = data.train.images.to(device) if on_device else data.train.images
        self.train_targets = data.train.targets(range(len(data.train)), device if on_device else None)
        self.n_steps = max(len(data.train) // settings.batch_size, 1)
        self.optimizer = make_optimizer(self.model, settings, self.plan)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, self.n_steps, settings)
        )
        self.temperature = config.temperature.build(config.temperature_seed) if config.role == "kd" else None
        # The shuffling generator lives on the CPU: batches of boxes are assembled there anyway.
        self.generator = torch.Generator().manual_seed(config.seed)
        shape = (3, config.image_size, config.image_size)
        self.per_image = (
            kd_step_flops(self.teacher, self.model, shape) if self.teacher is not None else train_step_flops(self.model, shape)
        )
        self.cached_teacher_logits: Optional[torch.Tensor] = None
        # Where the run stands; restored from a checkpoint when there is one.
        self.history: List[Dict[str, Any]] = []
        self.taus_used: List[np.ndarray] = []
        self.start_epoch, self.energy_before, self.wall_before, self.teacher_forwards = 0, None, 0.0, 0
        self._resume()

    # -- checkpoints ------------------------------------------------------------------------
    def _resume(self) -> None:
        checkpoint = self.store.load_checkpoint(self.run_dir)
        if checkpoint is None:
            return
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.generator.set_state(checkpoint["generator"])
        torch.set_rng_state(checkpoint["torch_rng"])
        if self.temperature is not None:
            self.temperature.load_state_dict(checkpoint["temperature"])
        self.history = list(checkpoint["history"])
        self.taus_used = [checkpoint["taus"].numpy()] if checkpoint["taus"].numel() else []
        self.start_epoch = int(checkpoint["epoch"]) + 1
        self.energy_before = EnergyReport.from_dict(checkpoint["energy"])
        self.wall_before = float(checkpoint["wall_time_s"])
        self.teacher_forwards = int(checkpoint["teacher_forwards"])
        log.info("resuming %s from epoch %d", self.config.name, self.start_epoch)

    def _save_checkpoint(self, epoch: int, energy: EnergyReport) -> None:
        self.store.save_checkpoint(
            self.run_dir,
            {
                "epoch": epoch,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "generator": self.generator.get_state(),
                "torch_rng": torch.get_rng_state(),
                "temperature": self.temperature.state_dict() if self.temperature is not None else {},
                "history": self.history,
                "taus": torch.as_tensor(np.concatenate(self.taus_used) if self.taus_used else np.zeros(0)),
                "energy": energy.to_dict(),
                "wall_time_s": self.history[-1]["wall_time_s"],
                "teacher_forwards": self.teacher_forwards,
            },
        )

    # -- one step and one epoch --------------------------------------------------------------
    def _step(self, idx: torch.Tensor, images: torch.Tensor, targets, tau: float) -> torch.Tensor:
        """One optimiser step; returns (total, localisation, classification, distillation) as a device tensor."""
        x = self.plan.prepare_batch(standardize(images.float() / 255.0, self.mean, self.std))
        with self.plan.autocast():
            outputs = self.step_model(x)
            teacher_logits = None
            if self.cached_teacher_logits is not None:
                teacher_logits = self.cached_teacher_logits[idx.to(self.device)]
            elif self.teacher is not None:
                with torch.no_grad():
                    teacher_logits = self.teacher(x)["cls_logits"]
                self.teacher_forwards += images.shape[0]
        losses = ssd_loss(outputs, self.anchors, targets, self.model.box_coder, self.settings.neg_pos_ratio)
        loss, distill = losses.total, torch.zeros((), device=self.device)
        if teacher_logits is not None:
            distill = anchor_distillation(
                self.config.loss, outputs["cls_logits"], teacher_logits, losses.used_anchors, tau, self.config.kl_reduction
            )
            loss = loss + self.config.alpha * distill
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.settings.grad_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.grad_clip_norm)
        self.optimizer.step()
        self.scheduler.step()
        return torch.stack([loss.detach(), losses.localisation.detach(), losses.classification.detach(), distill.detach()])

    def _epoch(self, epoch: int, bar) -> Tuple[List[float], int, np.ndarray]:
        self.model.train()
        # tau is drawn here: one value per batch for the whole epoch.
        taus = self.temperature.sample_many(self.n_steps) if self.temperature is not None else np.zeros(0)
        if self.teacher is not None and self.cached_teacher_logits is None and self.settings.augment == "none":
            # Without augmentation the teacher sees the same images every epoch: one pass serves the run.
            self.cached_teacher_logits = teacher_logits_for(self.teacher, self.train_images, self.mean, self.std, self.plan)
            self.teacher_forwards += len(self.data.train)
        sums, seen, steps = torch.zeros(4, device=self.device), 0, 0
        batches = iterate_batches(
            self.data.train, self.settings, self.generator, self.device, self.train_images, self.train_targets, self.num_workers
        )
        for step, (idx, images, targets) in enumerate(batches):
            sums += self._step(idx, images, targets, float(taus[step]) if taus.size else 1.0)
            seen += images.shape[0]
            steps += 1
            bar.update(1)
        # The one host synchronisation of the epoch.
        return (sums / max(steps, 1)).tolist(), seen, taus

    # -- the run -------------------------------------------------------------------------------
    def evaluate(self, dataset: DetectionDataset) -> DetectionMetrics:
        return evaluate_model(self.model, dataset, self.mean, self.std, self.device, plan=self.plan)

    def train(self, progress: bool, eval_every: int = 0) -> Dict[str, Any]:
        config, settings = self.config, self.settings
        bar = tqdm(
            total=settings.epochs * self.n_steps, initial=self.start_epoch * self.n_steps, desc=config.name,
            unit="step", disable=not progress, mininterval=1.0, dynamic_ncols=True,
        )
        started = last_checkpoint = time.perf_counter()
        with EnergyMeter(device=self.device) as meter:
            for epoch in range(self.start_epoch, settings.epochs):
                (total, localisation, classification, distillation), seen, taus = self._epoch(epoch, bar)
                self.taus_used.append(taus)
                energy = meter.snapshot() if self.energy_before is None else self.energy_before + meter.snapshot()
                tau_stats = TauStatistics.of(taus)
                self.history.append(
                    {
                        "epoch": epoch + 1,
                        "lr": self.optimizer.param_groups[0]["lr"],
                        "train_loss": total,
                        "localisation_loss": localisation,
                        "classification_loss": classification,
                        "distillation_loss": distillation,
                        "tau_mean": tau_stats.mean,
                        "tau_std": tau_stats.std,
                        "samples_seen": (self.history[-1]["samples_seen"] if self.history else 0) + seen,
                        "energy_kwh": energy.energy_kwh,
                        "energy_source": energy.source,
                        "wall_time_s": self.wall_before + time.perf_counter() - started,
                    }
                )
                last_epoch = epoch + 1 == settings.epochs
                if eval_every and (epoch + 1) % eval_every == 0 and not last_epoch and len(self.data.val):
                    self.history[-1]["val_map_pct"] = self.evaluate(self.data.val).map_pct
                bar.set_postfix(loss=f"{total:.3f}")
                if not last_epoch and time.perf_counter() - last_checkpoint >= CHECKPOINT_INTERVAL_S:
                    self._save_checkpoint(epoch, energy)
                    last_checkpoint = time.perf_counter()
        bar.close()
        energy = meter.report if self.energy_before is None else self.energy_before + meter.report
        wall_time = self.wall_before + time.perf_counter() - started
        self.store.save_model(self.run_dir, self.model.state_dict())
        # Evaluation is outside the energy meter and the FLOP count, as in the classification runs.
        val = self.evaluate(self.data.val) if len(self.data.val) else None
        test = self.evaluate(self.data.test)
        self.history[-1]["val_map_pct"] = val.map_pct if val is not None else float("nan")
        log.info("%s: test mAP %.2f%%, validation mAP %s", config.name, test.map_pct, f"{val.map_pct:.2f}%" if val else "n/a")
        return self._record(test, val, energy, wall_time)

    def _record(self, test: DetectionMetrics, val: Optional[DetectionMetrics], energy: EnergyReport, wall_time: float):
        samples_seen = self.history[-1]["samples_seen"]
        per_image = self.per_image
        return {
            "key": self.config.key,
            "name": self.config.name,
            "config": self.config.to_dict(),
            "test_map_pct": test.map_pct,
            "val_map_pct": val.map_pct if val is not None else float("nan"),
            "test_metrics": test.to_dict(),
            "energy": energy.to_dict(),
            "flops": {
                "per_image": per_image.to_dict(),
                "samples_seen": samples_seen,
                "teacher_forwards": self.teacher_forwards,
                "training_flops": float(per_image.student_forward + per_image.student_backward) * samples_seen
                + float(per_image.teacher_forward) * self.teacher_forwards,
                "definition": FLOP_DEFINITION,
            },
            "wall_time_s": wall_time,
            "tau": describe_taus(self.config, np.concatenate(self.taus_used) if self.taus_used else np.zeros(0)),
            "history": self.history,
            "data": self.data.describe(),
            "versions": library_versions(),
            "device": describe_device(self.device),
            "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }


# ---------------------------------------------------------------------------------------------
# The tuned baseline
# ---------------------------------------------------------------------------------------------
def tuned_detection_sweep(
    base: DetectionRunConfig,
    taus: Iterable[float],
    store: RunStore,
    device="auto",
    data_root=None,
    progress: bool = True,
    num_workers: int = 0,
) -> TunedResult:
    """One fixed-tau KD run per grid value; the winner is chosen on the validation mAP (never on test)."""
    if base.role != "kd":
        raise ValueError("a tau sweep needs a KD config (role='kd')")
    if base.val_fraction <= 0:
        raise ValueError("a tau sweep needs val_fraction > 0: tau is chosen on validation, never on test")
    runs = [
        train_detection_run(base.replace(temperature=TemperatureSpec.fixed(float(tau))), store, device, data_root, progress, num_workers)
        for tau in taus
    ]
    chosen = choose_on_validation(runs)
    log.info("tuned sweep %s: tau=%g chosen on validation mAP (%.2f%%)", base.name, chosen.config.temperature.tau, chosen.val_accuracy)
    return TunedResult(runs=runs, chosen=chosen)

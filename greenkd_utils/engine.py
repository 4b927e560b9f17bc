"""The training engine: teacher and student baselines (cross-entropy) and KD students.

``train_run(config, store)`` is the one entry point. It returns the cached
result when the store has the run, and otherwise trains it under an
``EnergyMeter`` with a FLOP count, checkpointing after every epoch so an
interrupted run resumes where it stopped.

The loop keeps the dataset on the training device as uint8, augments whole
batches there, and synchronises with the host once per epoch (metrics), never
per batch: the epoch's taus are drawn up front and copied in one transfer (a learned temperature computes
its tau on the device instead; see temperature.TemperatureSchedule).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import logging
import math
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import __version__
from .augment import BatchAugment, standardize
from .carbon import EnergyMeter, EnergyReport
from .config import RunConfig, TrainSettings
from .data import ImageDataset, load_dataset
from .flops import gflops_millions, kd_step_flops, train_step_flops
from .losses import kd_loss
from .models import create_model
from .store import RunStore
from .temperature import EpochTaus, TauStatistics

log = logging.getLogger(__name__)

FLOP_DEFINITION = (
    "training FLOPs = samples seen x (teacher forward + student forward + student backward) per sample, "
    "with the teacher term counting the teacher forwards that ran (once per training image when augmentation "
    "is off and the teacher's outputs are computed once), "
    "counted by torch.utils.flop_counter on real passes (2 FLOPs per multiply-add); "
    "GFLOPs (M) = 1e15 FLOPs; evaluation passes are not included"
)


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------
@dataclass
class RunResult:
    """The record of one finished run, as stored in ``result.json``."""

    key: str
    name: str
    config: RunConfig
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
    run_dir: str = ""

    @property
    def training_flops(self) -> float:
        return float(self.flops["training_flops"])

    @property
    def training_gflops_millions(self) -> float:
        return gflops_millions(self.training_flops)

    def to_dict(self) -> Dict[str, Any]:
        d = dict(self.__dict__)
        d["config"] = self.config.to_dict()
        d["energy"] = self.energy.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any], run_dir: str | os.PathLike = "") -> "RunResult":
        d = dict(d)
        d["config"] = RunConfig.from_dict(d["config"])
        d["energy"] = EnergyReport.from_dict(d["energy"])
        d["run_dir"] = str(run_dir or d.get("run_dir", ""))
        return cls(**d)

    def load_model(self, store: RunStore, device: str | torch.device = "cpu") -> torch.nn.Module:
        """The trained network in eval mode, weights loaded with ``weights_only=True``."""
        model = create_model(self.config.model, self.data["num_classes"], self.data["in_channels"])
        model.load_state_dict(store.load_state_dict(self.config))
        return model.to(device).eval()


# ---------------------------------------------------------------------------------------------
# Data on the device
# ---------------------------------------------------------------------------------------------
@dataclass
class DeviceData:
    """Train/validation/test tensors on the training device (images as uint8)."""

    train: Tuple[torch.Tensor, torch.Tensor]
    val: Tuple[torch.Tensor, torch.Tensor]
    test: Tuple[torch.Tensor, torch.Tensor]
    mean: torch.Tensor
    std: torch.Tensor
    num_classes: int
    in_channels: int
    image_size: int
    class_names: List[str] = field(default_factory=list)

    @property
    def input_shape(self) -> Tuple[int, int, int]:
        return (self.in_channels, self.image_size, self.image_size)

    def describe(self) -> Dict[str, Any]:
        return {
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "image_size": self.image_size,
            "n_train": int(self.train[1].numel()),
            "n_val": int(self.val[1].numel()),
            "n_test": int(self.test[1].numel()),
            "class_names": list(self.class_names),
        }


@functools.lru_cache(maxsize=4)
def _load_cached(name: str, root: Optional[str]) -> ImageDataset:
    # Decoding CIFAR or Tiny ImageNet takes seconds to minutes: do it once per process.
    return load_dataset(name, root=root)


# The validation split is the same for every run of a dataset, whatever its seed.
VALIDATION_SPLIT_SEED = 0


def prepare_data(config: RunConfig, device: torch.device, data_root: Optional[str] = None) -> DeviceData:
    dataset = _load_cached(config.dataset, None if data_root is None else str(data_root))
    if config.train_subset or config.test_subset:
        dataset = dataset.subset(train=config.train_subset, test=config.test_subset, seed=0)
    (train_x, train_y), (val_x, val_y) = dataset.split_validation(config.val_fraction, seed=VALIDATION_SPLIT_SEED)

    def put(x, y):
        return x.to(device), y.to(device)

    return DeviceData(
        train=put(train_x, train_y),
        val=put(val_x, val_y),
        test=put(dataset.test_images, dataset.test_labels),
        mean=torch.tensor(dataset.mean, dtype=torch.float32, device=device),
        std=torch.tensor(dataset.std, dtype=torch.float32, device=device),
        num_classes=dataset.num_classes,
        in_channels=dataset.in_channels,
        image_size=dataset.image_size,
        class_names=list(dataset.class_names),
    )


def shuffled_batches(n: int, batch_size: int, generator: torch.Generator, device) -> Iterator[torch.Tensor]:
    """Index batches of full size in a fresh random order. The last partial batch is dropped, so every
    step has the same shape (no recompilation) and the next epoch's shuffle covers the dropped samples."""
    order = torch.randperm(n, device=device, generator=generator)
    for start in range(0, max(n - batch_size, 0) + 1, batch_size):
        yield order[start : start + batch_size]


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    return max(n_train // batch_size, 1)


# ---------------------------------------------------------------------------------------------
# How to execute on this device
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExecutionPlan:
    """Device-dependent execution choices; numerics-changing ones come from the config (``fast``)."""

    device: torch.device
    autocast_dtype: Optional[torch.dtype]
    channels_last: bool
    fused_optimizer: bool
    compile: bool

    @classmethod
    def for_run(cls, settings: TrainSettings, device: torch.device) -> "ExecutionPlan":
        cuda = device.type == "cuda"
        fast = settings.fast and cuda  # bf16 and channels_last pay off on tensor cores, not on a small CPU
        return cls(
            device=device,
            autocast_dtype=torch.bfloat16 if fast else None,
            channels_last=fast,
            fused_optimizer=cuda,
            compile=settings.compile and cuda,
        )

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def prepare_batch(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA GPU is available; use device='cpu' or 'auto'")
    return device


# ---------------------------------------------------------------------------------------------
# Optimiser and schedule (the paper's: SGD, one-epoch warm-up, x0.2 at the milestones)
# ---------------------------------------------------------------------------------------------
def make_optimizer(
    model: torch.nn.Module, settings: TrainSettings, plan: ExecutionPlan, extra_params=()
) -> torch.optim.Optimizer:
    """SGD over the model's parameters and ``extra_params`` (a learned temperature's), with the same settings."""
    extra = {"fused": True} if plan.fused_optimizer else {}
    return torch.optim.SGD(
        [*model.parameters(), *extra_params],
        lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay, **extra,
    )


def lr_factor(step: int, steps_in_epoch: int, settings: TrainSettings) -> float:
    """Linear warm-up over the first ``warmup_epochs``, then x``lr_decay`` at each milestone epoch."""
    warmup_steps = settings.warmup_epochs * steps_in_epoch
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    epoch = step // steps_in_epoch
    decays = sum(epoch >= m for m in settings.milestones)
    return warm * settings.lr_decay**decays


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def predict_logits(
    model: torch.nn.Module,
    images: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    batch_size: int = 512,
    plan: Optional[ExecutionPlan] = None,
) -> torch.Tensor:
    """Logits (float32, on the images' device) of a model on uint8 images, in eval mode."""
    was_training = model.training
    model.eval()
    outputs = []
    for start in range(0, images.shape[0], batch_size):
        x = standardize(images[start : start + batch_size].float() / 255.0, mean, std)
        if plan is not None:
            x = plan.prepare_batch(x)
        with plan.autocast() if plan is not None else contextlib.nullcontext():
            outputs.append(model(x).float())
    model.train(was_training)
    if not outputs:
        return torch.empty(0, device=images.device)
    return torch.cat(outputs)


def accuracy_tensor(model, images, labels, mean, std, plan=None) -> torch.Tensor:
    """Accuracy in percent as a 0-d device tensor (no host sync); NaN for an empty split."""
    if labels.numel() == 0:
        return torch.tensor(float("nan"), device=labels.device)
    logits = predict_logits(model, images, mean, std, plan=plan)
    return (logits.argmax(1) == labels).float().mean() * 100.0


# ---------------------------------------------------------------------------------------------
# The objective of each role
# ---------------------------------------------------------------------------------------------
def objective(config: RunConfig, student_logits, teacher_logits, targets, tau) -> torch.Tensor:
    if config.role != "kd":
        return F.cross_entropy(student_logits.float(), targets)
    return kd_loss(
        config.loss,
        student_logits.float(),
        teacher_logits.float(),
        targets,
        tau,
        alpha=config.alpha,
        kl_reduction=config.kl_reduction,
        logit_standardization=config.logit_standardization,
    )


def train_epoch(
    student: torch.nn.Module,
    teacher: Optional[torch.nn.Module],
    train: Tuple[torch.Tensor, torch.Tensor],
    mean: torch.Tensor,
    std: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scheduler,
    taus: Optional[EpochTaus | torch.Tensor],
    loss_fn: Callable[[torch.Tensor, Optional[torch.Tensor], torch.Tensor, Optional[torch.Tensor]], torch.Tensor],
    augment: BatchAugment,
    generator: torch.Generator,
    plan: ExecutionPlan,
    batch_size: int,
    fixed_teacher_logits: Optional[torch.Tensor] = None,
    on_step: Optional[Callable[[], None]] = None,
) -> Dict[str, Any]:
    """One pass over ``train`` (uint8 images and labels on the device). ``taus[step]`` is the step's tau.

    Returns the epoch's loss sum and correct count as device tensors (reading them is the caller's one
    host sync) and, as Python ints, the samples seen and the teacher images forwarded.
    """
    images_all, labels_all = train
    device = labels_all.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    seen = teacher_forwards = 0
    for step, idx in enumerate(shuffled_batches(labels_all.numel(), batch_size, generator, device)):
        images, labels = images_all[idx], labels_all[idx]
        x = plan.prepare_batch(standardize(augment(images.float() / 255.0, generator), mean, std))
        with plan.autocast():
            teacher_logits = None
            if fixed_teacher_logits is not None:
                teacher_logits = fixed_teacher_logits[idx]
            elif teacher is not None:
                with torch.inference_mode():
                    teacher_logits = teacher(x)
                # An inference-mode tensor cannot be saved for the student's backward; a copy can.
                teacher_logits = teacher_logits.clone()
                teacher_forwards += labels.numel()
            student_logits = student(x)
        loss = loss_fn(student_logits, teacher_logits, labels, taus[step] if taus is not None else None)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        loss_sum += loss.detach() * labels.numel()
        correct += (student_logits.detach().argmax(1) == labels).sum()
        seen += labels.numel()
        if on_step is not None:
            on_step()
    return {"loss_sum": loss_sum, "correct": correct, "seen": seen, "teacher_forwards": teacher_forwards}


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------
def train_run(
    config: RunConfig,
    store: RunStore,
    device: str | torch.device | None = "auto",
    data_root: str | os.PathLike | None = None,
    progress: bool = True,
) -> RunResult:
    """Load ``config``'s finished run from ``store``, or train it (and its teacher, once)."""
    cached = store.load_result(config)
    if cached is not None:
        return RunResult.from_dict(cached, store.run_dir(config))
    device = resolve_device(device)
    teacher = None
    if config.role == "kd":
        teacher_result = train_run(config.teacher, store, device=device, data_root=data_root, progress=progress)
        teacher = teacher_result.load_model(store, device)
    data = prepare_data(config, device, None if data_root is None else str(data_root))
    record = store.get_or_run(
        config, lambda run_dir: _train(config, run_dir, data, teacher, device, store, progress)
    )
    return RunResult.from_dict(record, store.run_dir(config))


def _train(
    config: RunConfig,
    run_dir: Path,
    data: DeviceData,
    teacher: Optional[torch.nn.Module],
    device: torch.device,
    store: RunStore,
    progress: bool,
) -> Dict[str, Any]:
    settings = config.train
    plan = ExecutionPlan.for_run(settings, device)
    torch.manual_seed(config.seed)
    model = plan.prepare_model(create_model(config.model, data.num_classes, data.in_channels))
    if teacher is not None:
        teacher = plan.prepare_model(teacher).eval()
    step_model = torch.compile(model) if plan.compile else model
    step_teacher = torch.compile(teacher) if (plan.compile and teacher is not None) else teacher

    n_steps = steps_per_epoch(data.train[1].numel(), settings.batch_size)
    batch_size = min(settings.batch_size, data.train[1].numel())
    temperature = config.temperature.build(config.temperature_seed).to(device) if config.role == "kd" else None
    # A learned temperature (CTKD) trains with the student, in the same optimiser and lr schedule.
    optimizer = make_optimizer(model, settings, plan, temperature.parameters() if temperature is not None else ())
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, n_steps, settings)
    )
    generator = torch.Generator(device=device).manual_seed(config.seed)
    augment = BatchAugment(settings.augment)
    if teacher is not None:
        per_sample = kd_step_flops(teacher, model, data.input_shape)
    else:
        per_sample = train_step_flops(model, data.input_shape)

    history: List[Dict[str, Any]] = []
    taus_used: List[np.ndarray] = []
    start_epoch, energy_before, wall_before = 0, None, 0.0
    fixed_teacher_logits: Optional[torch.Tensor] = None
    teacher_forwards = 0  # teacher images actually forwarded: the FLOP count follows what ran
    checkpoint = store.load_checkpoint(run_dir)
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        generator.set_state(checkpoint["generator"].to(generator.get_state().device))
        if temperature is not None:
            temperature.load_state_dict(checkpoint["temperature"])
        history = list(checkpoint["history"])
        taus_used = [checkpoint["taus"].numpy()] if checkpoint["taus"].numel() else []
        start_epoch = int(checkpoint["epoch"]) + 1
        energy_before = EnergyReport.from_dict(checkpoint["energy"])
        wall_before = float(checkpoint["wall_time_s"])
        teacher_forwards = int(checkpoint["teacher_forwards"])
        log.info("resuming %s from epoch %d", config.name, start_epoch)

    bar = tqdm(
        total=settings.epochs * n_steps,
        initial=start_epoch * n_steps,
        desc=config.name,
        unit="step",
        disable=not progress,
        mininterval=1.0,
        dynamic_ncols=True,
    )
    started = time.perf_counter()
    with EnergyMeter(device=device) as meter:
        for epoch in range(start_epoch, settings.epochs):
            model.train()
            # tau is drawn here for the whole epoch (per batch or per sample) and copied to the device once;
            # a learned temperature computes each step's tau on the device instead.
            epoch_taus = temperature.for_epoch(epoch, n_steps, batch_size, device) if temperature is not None else None
            if teacher is not None and fixed_teacher_logits is None and augment.is_identity:
                # Without augmentation the teacher sees the same images every epoch: one pass serves the run.
                fixed_teacher_logits = predict_logits(teacher, data.train[0], data.mean, data.std, plan=plan)
                teacher_forwards += data.train[1].numel()
            stats = train_epoch(
                step_model,
                step_teacher,
                data.train,
                data.mean,
                data.std,
                optimizer,
                scheduler,
                epoch_taus,
                lambda s, t, y, tau: objective(config, s, t, y, tau),
                augment,
                generator,
                plan,
                batch_size,
                fixed_teacher_logits=fixed_teacher_logits,
                on_step=lambda: bar.update(1),
            )
            teacher_forwards += stats["teacher_forwards"]
            seen = stats["seen"]

            # The one host synchronisation of the epoch.
            val_acc = accuracy_tensor(model, *data.val, data.mean, data.std, plan)
            test_acc = accuracy_tensor(model, *data.test, data.mean, data.std, plan)
            train_loss, train_acc, val_acc, test_acc = (
                torch.stack([stats["loss_sum"] / seen, stats["correct"] * 100.0 / seen, val_acc, test_acc]).tolist()
            )
            used = epoch_taus.values().reshape(-1) if epoch_taus is not None else np.zeros(0)
            taus_used.append(used)
            energy = meter.snapshot() if energy_before is None else energy_before + meter.snapshot()
            tau_stats = TauStatistics.of(used)
            history.append(
                {
                    "epoch": epoch + 1,
                    # The epoch's own (last step's) lr; the optimiser already holds the next epoch's.
                    "lr": settings.lr * lr_factor((epoch + 1) * n_steps - 1, n_steps, settings),
                    "train_loss": train_loss,
                    "train_accuracy": train_acc,
                    "val_accuracy": val_acc,
                    "test_accuracy": test_acc,
                    "tau_mean": tau_stats.mean,
                    "tau_std": tau_stats.std,
                    "tau_min": tau_stats.min,
                    "tau_max": tau_stats.max,
                    "samples_seen": (history[-1]["samples_seen"] if history else 0) + seen,
                    "energy_kwh": energy.energy_kwh,
                    "energy_source": energy.source,
                    "wall_time_s": wall_before + time.perf_counter() - started,
                    **(epoch_taus.record() if epoch_taus is not None else {}),
                }
            )
            bar.set_postfix(loss=f"{train_loss:.3f}", val=f"{val_acc:.1f}", test=f"{test_acc:.1f}")
            store.save_checkpoint(
                run_dir,
                {
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "generator": generator.get_state(),
                    "temperature": temperature.state_dict() if temperature is not None else {},
                    "history": history,
                    "taus": torch.as_tensor(np.concatenate(taus_used) if taus_used else np.zeros(0)),
                    "energy": energy.to_dict(),
                    "wall_time_s": history[-1]["wall_time_s"],
                    "teacher_forwards": teacher_forwards,
                },
            )
    bar.close()
    energy = meter.report if energy_before is None else energy_before + meter.report
    store.save_model(run_dir, model.state_dict())
    samples_seen = history[-1]["samples_seen"]
    all_taus = np.concatenate(taus_used) if taus_used else np.zeros(0)
    last = history[-1]
    return {
        "key": config.key,
        "name": config.name,
        "config": config.to_dict(),
        "test_accuracy": last["test_accuracy"],
        "val_accuracy": last["val_accuracy"],
        "energy": energy.to_dict(),
        "flops": {
            "per_sample": per_sample.to_dict(),
            "samples_seen": samples_seen,
            "teacher_forwards": teacher_forwards,
            "training_flops": float(per_sample.student_forward + per_sample.student_backward) * samples_seen
            + float(per_sample.teacher_forward) * teacher_forwards,
            "definition": FLOP_DEFINITION,
        },
        "wall_time_s": wall_before + time.perf_counter() - started,
        "tau": describe_taus(config, all_taus),
        "history": history,
        "data": data.describe(),
        "versions": library_versions(),
        "device": describe_device(device),
        "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def describe_taus(config: RunConfig, taus: np.ndarray) -> Dict[str, Any]:
    if config.role != "kd":
        return {"mode": None}
    spec = config.temperature
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


def library_versions() -> Dict[str, str]:
    import torchvision

    return {
        "greenkd": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "cuda": str(torch.version.cuda),
    }


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {platform.processor() or platform.machine()} ({os.cpu_count()} logical cores, {torch.get_num_threads()} torch threads)"

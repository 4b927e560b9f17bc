"""Quantization-aware training (QAT) of a student, and Table 8: quantization against KD.

The paper's Table 8 sets three ways of getting a small MobileNetV2 side by side:
the float network trained alone (cross-entropy), the same network trained with
quantization-aware training and converted to 8-bit integers, and KD from a
ResNet18 teacher with a tuned or a stochastic temperature.

QAT here is PyTorch's FX graph-mode QAT (``torch.ao.quantization.quantize_fx``):
the network is traced, conv-batchnorm(-relu) triples are fused, fake-quantize
modules simulate int8 weights and activations during training, and after
training the network is converted to a real int8 model that runs on the CPU
(the quantized kernels are CPU kernels). FX mode handles MobileNetV2's residual
additions without rewriting the model, which eager mode would need.

By default QAT fine-tunes the trained float student (the usual recipe: fusion
carries its batch-norm statistics into the QAT convolutions), and the QAT row
of Table 8 costs both stages, the float training plus the quantization-aware
fine-tuning (:class:`QATPipeline`). A QAT run is cached in the run store like
any other run, under its own config (:class:`QATConfig`), whose key never
collides with a :class:`RunConfig`'s. Its record keeps the int8 model's
accuracy (the table's number), the fake-quant network's accuracy, and the
serialized ``state_dict`` sizes before and after conversion.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime as _dt
import io
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .augment import BatchAugment, standardize
from .carbon import EnergyMeter, EnergyReport
from .config import config_key, RunConfig, TrainSettings
from .engine import (
    FLOP_DEFINITION,
    DeviceData,
    ExecutionPlan,
    RunResult,
    accuracy_tensor,
    describe_device,
    library_versions,
    lr_factor,
    make_optimizer,
    prepare_data,
    resolve_device,
    steps_per_epoch,
    train_epoch,
    train_run,
)
from .flops import gflops_millions, train_step_flops
from .models import create_model
from .store import RunStore

log = logging.getLogger(__name__)

# Quantized-kernel back ends, in order of preference for "auto": x86 and fbgemm on Intel/AMD, qnnpack on ARM.
BACKENDS = ("x86", "fbgemm", "qnnpack", "onednn")

QAT_FLOP_NOTE = (
    "QAT: the fake-quantize operations (elementwise scale, round, clamp on weights and activations) are not "
    "counted by torch.utils.flop_counter, so the count is that of the float convolutions and matrix products "
    "of the fused network"
)

BYTES_PER_MB = 1e6


# ---------------------------------------------------------------------------------------------
# The torch API, and its warnings
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _QuantizationAPI:
    prepare_qat_fx: Any
    convert_fx: Any
    qat_qconfig_mapping: Any
    disable_observer: Any
    freeze_bn_stats: Any


def quantization_api() -> _QuantizationAPI:
    """The FX QAT functions of this torch, or an ImportError that says what is missing."""
    try:
        from torch.ao.nn.intrinsic.qat import freeze_bn_stats
        from torch.ao.quantization import disable_observer, get_default_qat_qconfig_mapping
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_qat_fx
    except ImportError as err:
        raise ImportError(
            f"quantization-aware training needs torch.ao.quantization's FX API (prepare_qat_fx, convert_fx, "
            f"get_default_qat_qconfig_mapping), which torch {torch.__version__} does not have ({err}). "
            "Install a torch that still ships torch.ao.quantization (e.g. the version in environment.yml)."
        ) from err
    return _QuantizationAPI(prepare_qat_fx, convert_fx, get_default_qat_qconfig_mapping, disable_observer, freeze_bn_stats)


# torch.ao.quantization is being migrated to torchao; until then its FX QAT still works, and these warnings
# (the module's deprecation notice, an observer argument torch itself passes, quantized-tensor creation
# inside its own int8 modules) say nothing a user of this kit can act on, so they are filtered here, and
# only here, rather than printed in every notebook.
_EXPECTED_WARNINGS = (
    (DeprecationWarning, r"torch\.ao\.quantization is deprecated"),
    (UserWarning, r"Please use quant_min and quant_max"),
    (UserWarning, r"torch\.quantize_per_tensor, torch\.quantize_per_channel"),
)


@contextlib.contextmanager
def quiet_quantization_warnings() -> Iterator[None]:
    """Silence the known deprecation warnings of torch.ao.quantization inside the block (no others)."""
    with warnings.catch_warnings():
        for category, message in _EXPECTED_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield


def resolve_backend(backend: str = "auto") -> str:
    """A quantized back end this torch supports; ``auto`` picks x86/fbgemm, else qnnpack (ARM)."""
    supported = [b for b in torch.backends.quantized.supported_engines if b != "none"]
    if backend == "auto":
        for candidate in BACKENDS:
            if candidate in supported:
                return candidate
        raise RuntimeError(f"this torch build has no quantized back end (supported engines: {supported})")
    if backend not in BACKENDS:
        raise ValueError(f"unknown quantization backend {backend!r}; valid: auto, {', '.join(BACKENDS)}")
    if backend not in supported:
        raise ValueError(f"quantization backend {backend!r} is not supported here; valid: {', '.join(supported)}")
    return backend


@contextlib.contextmanager
def quantized_engine(backend: str) -> Iterator[None]:
    """Select the quantized kernels (weight packing and int8 inference depend on it), then restore."""
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = backend
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


# ---------------------------------------------------------------------------------------------
# Preparing, converting, measuring
# ---------------------------------------------------------------------------------------------
def prepare_qat(model: nn.Module, backend: str, input_shape: Tuple[int, ...]) -> nn.Module:
    """``model`` traced, fused (conv-bn, conv-bn-relu) and fitted with fake-quantize modules, in train mode.

    ``model`` is not modified (FX copies it); the result lives on the CPU like ``model``'s example input.
    """
    api = quantization_api()
    example = torch.zeros((2,) + tuple(input_shape))
    with quiet_quantization_warnings():
        return api.prepare_qat_fx(copy.deepcopy(model).cpu().train(), api.qat_qconfig_mapping(backend), (example,))


def convert_to_int8(prepared: nn.Module, backend: str) -> nn.Module:
    """The int8 model of a QAT-prepared network (a CPU model in eval mode; ``prepared`` is untouched)."""
    api = quantization_api()
    float_copy = copy.deepcopy(prepared).cpu().eval()
    with quiet_quantization_warnings(), quantized_engine(backend):
        return api.convert_fx(float_copy).eval()


def freeze_quantization(prepared: nn.Module) -> None:
    """Stop updating observer ranges and batch-norm statistics (the usual last phase of QAT)."""
    api = quantization_api()
    prepared.apply(api.disable_observer)
    prepared.apply(api.freeze_bn_stats)


@torch.no_grad()
def int8_logits(model: nn.Module, images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, backend: str,
                batch_size: int = 512) -> torch.Tensor:
    """Logits of an int8 model on uint8 images, on the CPU (where the quantized kernels are)."""
    images, mean, std = images.cpu(), mean.cpu(), std.cpu()
    outputs = []
    with quiet_quantization_warnings(), quantized_engine(backend):
        for start in range(0, images.shape[0], batch_size):
            outputs.append(model(standardize(images[start : start + batch_size].float() / 255.0, mean, std)))
    return torch.cat(outputs) if outputs else torch.empty(0)


def int8_accuracy(model, images, labels, mean, std, backend: str) -> float:
    """Accuracy in percent of an int8 model (NaN for an empty split)."""
    if labels.numel() == 0:
        return float("nan")
    logits = int8_logits(model, images, mean, std, backend)
    return float((logits.argmax(1) == labels.cpu()).float().mean() * 100.0)


def qat_step_flops(prepared: nn.Module, input_shape: Tuple[int, ...]):
    """Per-sample FLOPs of one QAT training step (:func:`flops.train_step_flops` on a copy).

    A fake-quantize module resizes its scale and zero-point buffers on its first pass (per-channel
    weights: one per output channel), which the FLOP counter's restoring of buffers cannot undo; so
    the count runs on a copy that has seen one batch, and ``prepared`` is left exactly as it was.
    """
    probe = copy.deepcopy(prepared)
    device = next(probe.parameters()).device
    with quiet_quantization_warnings():
        with torch.no_grad():
            probe.train()(torch.zeros((2,) + tuple(input_shape), device=device))
        return train_step_flops(probe, input_shape)


def state_dict_bytes(model: nn.Module) -> int:
    """Size of ``model``'s serialized state_dict (torch.save), the usual 'model size' of a checkpoint."""
    buffer = io.BytesIO()
    with quiet_quantization_warnings():
        torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


# ---------------------------------------------------------------------------------------------
# The run's config and record
# ---------------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------------
# The run's config and record
# ---------------------------------------------------------------------------------------------
QAT_INITS = ("student", "scratch")


@dataclass(frozen=True)
class QATConfig:
    """One QAT run: the data fields of a student ``RunConfig``, the QAT schedule and the back end.

    ``init_from`` is the finished float student run whose weights QAT starts from (the usual
    recipe: quantization-aware fine-tuning of a trained network); None trains from scratch.
    ``kind`` is part of the hashed dict, so a QAT run never shares a key with a CE or KD run.
    From epoch ``floor(freeze_fraction * epochs)`` on, observers and batch-norm statistics are frozen
    (1.0: never).
    """

    dataset: str
    model: str = "mobilenetv2"
    seed: int = 0
    train: TrainSettings = field(default_factory=TrainSettings)
    backend: str = "x86"
    freeze_fraction: float = 1.0
    init_from: Optional[RunConfig] = None
    profile: str = "paper"
    val_fraction: float = 0.1
    train_subset: Optional[int] = None
    test_subset: Optional[int] = None
    kind: str = "qat_fx"

    def __post_init__(self):
        object.__setattr__(self, "freeze_fraction", float(self.freeze_fraction))
        object.__setattr__(self, "val_fraction", float(self.val_fraction))
        if isinstance(self.train, dict):
            object.__setattr__(self, "train", TrainSettings(**self.train))
        if isinstance(self.init_from, dict):
            object.__setattr__(self, "init_from", RunConfig.from_dict(self.init_from))
        if self.kind != "qat_fx":
            raise ValueError(f"unknown QAT kind {self.kind!r}; valid: qat_fx")
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown quantization backend {self.backend!r}; valid: {', '.join(BACKENDS)}")
        if not 0.0 < self.freeze_fraction <= 1.0:
            raise ValueError(f"freeze_fraction must lie in (0, 1]; got {self.freeze_fraction}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must lie in [0, 1); got {self.val_fraction}")
        if self.init_from is not None:
            start = self.init_from
            if start.role != "student":
                raise ValueError(f"QAT starts from a cross-entropy student run; got a {start.role!r} config")
            mine = (self.dataset, self.model, self.val_fraction, self.train_subset, self.test_subset)
            theirs = (start.dataset, start.model, start.val_fraction, start.train_subset, start.test_subset)
            if mine != theirs:
                raise ValueError(f"QAT must use the data and model of the run it starts from; {mine} != {theirs}")

    @classmethod
    def from_student(cls, student: RunConfig, init: str = "student", backend: str = "auto",
                     train: Optional[TrainSettings] = None, **changes) -> "QATConfig":
        """The QAT run of a cross-entropy student ``RunConfig``: same data, model and seed.

        ``init="student"`` starts from the student's trained weights, ``"scratch"`` from a fresh
        initialisation; ``train`` is the QAT schedule (default: the student's own).
        """
        if init not in QAT_INITS:
            raise ValueError(f"unknown QAT init {init!r}; valid: {', '.join(QAT_INITS)}")
        if student.role != "student":
            raise ValueError(f"QAT mirrors a cross-entropy student run; got a {student.role!r} config")
        return cls(
            dataset=student.dataset,
            model=student.model,
            seed=student.seed,
            train=train or student.train,
            backend=resolve_backend(backend),
            init_from=student if init == "student" else None,
            profile=student.profile,
            val_fraction=student.val_fraction,
            train_subset=student.train_subset,
            test_subset=student.test_subset,
            **changes,
        )

    @property
    def role(self) -> str:
        return "qat"

    @property
    def freeze_epoch(self) -> int:
        """The first (0-based) epoch run with frozen observers and BN statistics; never the first epoch,
        since observers that have seen no data would fix meaningless ranges."""
        return max(1, math.floor(self.freeze_fraction * self.train.epochs))

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "QATConfig":
        return cls(**d)

    @property
    def key(self) -> str:
        return config_key(self.to_dict())

    @property
    def name(self) -> str:
        start = "ft" if self.init_from is not None else "scratch"
        return f"qat_{self.dataset}_{self.model}_{self.backend}_{start}_s{self.seed}"


@dataclass
class QATResult:
    """The record of a finished QAT run (``result.json``). Energy, FLOPs and time are QAT's own;
    :class:`QATPipeline` adds the float run QAT started from."""

    key: str
    name: str
    config: QATConfig
    test_accuracy: float  # of the int8 model
    val_accuracy: float  # of the int8 model
    fake_quant_test_accuracy: float
    initial_test_accuracy: Optional[float]  # of the float network QAT started from (None: from scratch)
    model_size: Dict[str, Any]
    energy: EnergyReport
    flops: Dict[str, Any]
    wall_time_s: float
    history: List[Dict[str, Any]]
    data: Dict[str, Any]
    versions: Dict[str, str]
    device: str
    finished_at: str
    tau: Dict[str, Any] = field(default_factory=lambda: {"mode": None})
    run_dir: str = ""

    @property
    def training_flops(self) -> float:
        return float(self.flops["training_flops"])

    @property
    def training_gflops_millions(self) -> float:
        return gflops_millions(self.training_flops)

    @classmethod
    def from_dict(cls, d: Dict[str, Any], run_dir: str | os.PathLike = "") -> "QATResult":
        d = dict(d)
        d["config"] = QATConfig.from_dict(d["config"])
        d["energy"] = EnergyReport.from_dict(d["energy"])
        d["run_dir"] = str(run_dir or d.get("run_dir", ""))
        return cls(**d)

    def input_shape(self) -> Tuple[int, int, int]:
        return (self.data["in_channels"], self.data["image_size"], self.data["image_size"])

    def load_prepared_model(self, store: RunStore) -> nn.Module:
        """The trained fake-quant network (CPU, eval mode), weights loaded with ``weights_only=True``."""
        model = create_model(self.config.model, self.data["num_classes"], self.data["in_channels"])
        prepared = prepare_qat(model, self.config.backend, self.input_shape())
        prepared.load_state_dict(store.load_state_dict(self.config))
        return prepared.eval()

    def load_int8_model(self, store: RunStore) -> nn.Module:
        """The converted int8 model (CPU, eval mode)."""
        return convert_to_int8(self.load_prepared_model(store), self.config.backend)


@dataclass
class QATPipeline:
    """What getting the int8 model cost: the float run QAT started from (if any) plus QAT itself.

    Like the tuned sweep's sum over its grid, energy, FLOPs and time add up both stages; the
    accuracy is the int8 model's. Quacks like a RunResult for ``experiments.summarise``.
    """

    qat: QATResult
    initial: Optional[RunResult] = None

    @property
    def test_accuracy(self) -> float:
        return self.qat.test_accuracy

    @property
    def val_accuracy(self) -> float:
        return self.qat.val_accuracy

    @property
    def tau(self) -> Dict[str, Any]:
        return {"mode": None}

    @property
    def energy(self) -> EnergyReport:
        return self.qat.energy if self.initial is None else self.initial.energy + self.qat.energy

    @property
    def training_flops(self) -> float:
        return self.qat.training_flops + (0.0 if self.initial is None else self.initial.training_flops)

    @property
    def training_gflops_millions(self) -> float:
        return gflops_millions(self.training_flops)

    @property
    def wall_time_s(self) -> float:
        return self.qat.wall_time_s + (0.0 if self.initial is None else self.initial.wall_time_s)


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------
def train_qat(
    config: QATConfig,
    store: RunStore,
    device: str | torch.device | None = "auto",
    data_root: str | os.PathLike | None = None,
    progress: bool = True,
) -> QATPipeline:
    """Load ``config``'s finished QAT run from ``store``, or train, convert and evaluate it
    (training the float run it starts from first, if that is not in the store)."""
    initial = None
    if config.init_from is not None:
        initial = train_run(config.init_from, store, device, data_root, progress)
    cached = store.load_result(config)
    if cached is not None:
        return QATPipeline(QATResult.from_dict(cached, store.run_dir(config)), initial)
    quantization_api()  # fail before any training if this torch cannot do it
    device = resolve_device(device)
    # prepare_data only reads the data fields (dataset, subsets, val_fraction) that QATConfig shares with RunConfig.
    data = prepare_data(config, device, None if data_root is None else str(data_root))
    start = None if initial is None else store.load_state_dict(config.init_from)
    record = store.get_or_run(config, lambda run_dir: _train(config, run_dir, data, start, device, store, progress))
    return QATPipeline(QATResult.from_dict(record, store.run_dir(config)), initial)


def _train(config: QATConfig, run_dir: Path, data: DeviceData, start: Optional[Dict[str, torch.Tensor]],
           device: torch.device, store: RunStore, progress: bool) -> Dict[str, Any]:
    # Fake quantization runs in float32: bf16 autocast and compilation are switched off whatever the profile says.
    settings = dataclasses.replace(config.train, fast=False, compile=False)
    plan = ExecutionPlan.for_run(settings, device)
    torch.manual_seed(config.seed)
    float_model = create_model(config.model, data.num_classes, data.in_channels)
    initial_test = None
    if start is not None:
        float_model.load_state_dict(start)
        initial_test = float(accuracy_tensor(float_model.to(device), *data.test, data.mean, data.std))
    fp32_bytes = state_dict_bytes(float_model)
    # Fusion folds each batch norm, with its running statistics, into the QAT convolution it follows.
    model = prepare_qat(float_model.cpu(), config.backend, data.input_shape).to(device)
    per_sample = qat_step_flops(model, data.input_shape)

    n_train = data.train[1].numel()
    n_steps = steps_per_epoch(n_train, settings.batch_size)
    batch_size = min(settings.batch_size, n_train)
    optimizer = make_optimizer(model, settings, plan)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, n_steps, settings))
    generator = torch.Generator(device=device).manual_seed(config.seed)
    augment = BatchAugment(settings.augment)

    history: List[Dict[str, Any]] = []
    start_epoch, energy_before, wall_before = 0, None, 0.0
    checkpoint = store.load_checkpoint(run_dir)
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        generator.set_state(checkpoint["generator"].to(generator.get_state().device))
        history = list(checkpoint["history"])
        start_epoch = int(checkpoint["epoch"]) + 1
        energy_before = EnergyReport.from_dict(checkpoint["energy"])
        wall_before = float(checkpoint["wall_time_s"])
        log.info("resuming %s from epoch %d", config.name, start_epoch)

    bar = tqdm(total=settings.epochs * n_steps, initial=start_epoch * n_steps, desc=config.name, unit="step",
               disable=not progress, mininterval=1.0, dynamic_ncols=True)
    started = time.perf_counter()
    with EnergyMeter(device=device) as meter, quiet_quantization_warnings():
        for epoch in range(start_epoch, settings.epochs):
            model.train()
            if epoch >= config.freeze_epoch:
                freeze_quantization(model)
            sums = train_epoch(
                model, None, data.train, data.mean, data.std, optimizer, scheduler, None,
                lambda logits, _teacher, labels, _tau: F.cross_entropy(logits.float(), labels),
                augment, generator, plan, batch_size, on_step=lambda: bar.update(1),
            )
            # Accuracy of the fake-quant network in float: the int8 model is evaluated once, after training.
            val_acc = accuracy_tensor(model, *data.val, data.mean, data.std)
            test_acc = accuracy_tensor(model, *data.test, data.mean, data.std)
            seen = sums["seen"]
            train_loss, train_acc, val_acc, test_acc = (
                torch.stack([sums["loss_sum"] / seen, sums["correct"] * 100.0 / seen, val_acc, test_acc]).tolist()
            )
            energy = meter.snapshot() if energy_before is None else energy_before + meter.snapshot()
            history.append(
                {
                    "epoch": epoch + 1,
                    "lr": settings.lr * lr_factor((epoch + 1) * n_steps - 1, n_steps, settings),
                    "train_loss": train_loss,
                    "train_accuracy": train_acc,
                    "val_accuracy": val_acc,
                    "test_accuracy": test_acc,
                    "observers_frozen": epoch >= config.freeze_epoch,
                    "samples_seen": (history[-1]["samples_seen"] if history else 0) + seen,
                    "energy_kwh": energy.energy_kwh,
                    "energy_source": energy.source,
                    "wall_time_s": wall_before + time.perf_counter() - started,
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
                    "history": history,
                    "energy": energy.to_dict(),
                    "wall_time_s": history[-1]["wall_time_s"],
                },
            )
    bar.close()
    energy = meter.report if energy_before is None else energy_before + meter.report
    wall_time = wall_before + time.perf_counter() - started
    store.save_model(run_dir, model.state_dict())

    int8_model = convert_to_int8(model, config.backend)
    int8_bytes = state_dict_bytes(int8_model)
    int8_test = int8_accuracy(int8_model, *data.test, data.mean, data.std, config.backend)
    int8_val = int8_accuracy(int8_model, *data.val, data.mean, data.std, config.backend)
    samples_seen = history[-1]["samples_seen"]
    return {
        "key": config.key,
        "name": config.name,
        "config": config.to_dict(),
        "test_accuracy": int8_test,
        "val_accuracy": int8_val,
        "fake_quant_test_accuracy": history[-1]["test_accuracy"],
        "initial_test_accuracy": initial_test,
        "model_size": {
            "fp32_bytes": fp32_bytes,
            "int8_bytes": int8_bytes,
            "fp32_mb": fp32_bytes / BYTES_PER_MB,
            "int8_mb": int8_bytes / BYTES_PER_MB,
            "compression": fp32_bytes / int8_bytes,
            "definition": "size of the serialized state_dict (torch.save); MB = 1e6 bytes",
        },
        "energy": energy.to_dict(),
        "flops": {
            "per_sample": per_sample.to_dict(),
            "samples_seen": samples_seen,
            "training_flops": float(per_sample.student_forward + per_sample.student_backward) * samples_seen,
            "definition": FLOP_DEFINITION,
            "note": QAT_FLOP_NOTE,
        },
        "wall_time_s": wall_time,
        "history": history,
        "data": data.describe(),
        "versions": library_versions(),
        "device": describe_device(device) + "; int8 evaluation on cpu",
        "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "tau": {"mode": None},
    }


# ---------------------------------------------------------------------------------------------
# Table 8: the float student, QAT, and KD into the same architecture
# ---------------------------------------------------------------------------------------------
TABLE8_STUDENT = "mobilenetv2"
TABLE8_TEACHER = "resnet18"

TABLE8_METRICS = {
    "accuracy_pct": "accuracy_pct",
    "training_gflops_millions": "training_gflops_millions",
    "energy_kwh_pue": "energy_kwh",  # the paper's kWh include its PUE
    "co2_g": "co2_g",
}


def student_config(exp, settings, seed: int, model: str = TABLE8_STUDENT) -> RunConfig:
    """The profile's cross-entropy student config for ``model``, with the notebook's epochs and lr."""
    config = exp.profile.student_config(settings.dataset, seed, model)
    return config.replace(train=exp.profile.train_settings("student", **settings.student_changes()))


def qat_config(exp, settings, seed: int, model: str = TABLE8_STUDENT) -> QATConfig:
    """The notebook's QAT run: fine-tuning of its cross-entropy student (or from scratch, ``qat_init``)."""
    student = student_config(exp, settings, seed, model)
    changes = settings.student_changes()
    if settings.qat_epochs is not None:
        changes["epochs"] = int(settings.qat_epochs)
    if settings.qat_lr is not None:
        changes["lr"] = float(settings.qat_lr)
    if settings.qat_init == "student":
        changes["warmup_epochs"] = 0  # the network is trained already: no warm-up from a random start
    return QATConfig.from_student(
        student, init=settings.qat_init, backend=settings.qat_backend,
        train=exp.profile.train_settings("student", **changes), freeze_fraction=settings.qat_freeze_fraction,
    )


def table8(exp, settings, student: str = TABLE8_STUDENT, teacher: str = TABLE8_TEACHER,
           loss: str = "hkd") -> Tuple[pd.DataFrame, pd.DataFrame]:
    """Table 8 and the QAT details.

    Returns ``(table, qat_details)``: one row per method (student, qat, kd_tuned, kd_stochastic)
    with accuracy (mean +- std over seeds; the int8 model's for QAT), GFLOPs (M), kWh, CO2eq and
    model size, the QAT row costing the float student it starts from plus QAT; and one row per seed
    of the QAT runs (fp32 vs int8 size, float vs fake-quant vs int8 accuracy, QAT's own cost).
    """
    from .experiments import summarise

    changes = settings.student_changes()
    models = {"teacher_model": teacher, "student_model": student}
    qat = [train_qat(qat_config(exp, settings, s, student), exp.store, exp.device, exp.data_root, exp.progress)
           for s in settings.seeds]
    cells = {
        "student": [exp.run(student_config(exp, settings, s, student)) for s in settings.seeds],
        "qat": qat,
        "kd_tuned": [exp.tuned(settings.dataset, s, loss, taus=settings.tau_grid, **models, **changes)
                     for s in settings.seeds],
        "kd_stochastic": [exp.stochastic(settings.dataset, s, loss, **models, **changes) for s in settings.seeds],
    }
    fp32_mb = qat[0].qat.model_size["fp32_mb"]
    rows = []
    for method, results in cells.items():
        row = summarise(
            exp, results, dataset=settings.dataset, method=method, model=student,
            teacher=teacher if method.startswith("kd") else "", loss=loss if method.startswith("kd") else "ce",
            weights="int8" if method == "qat" else "fp32",
        )
        row["model_size_mb"] = qat[0].qat.model_size["int8_mb"] if method == "qat" else fp32_mb
        rows.append(row)
    details = pd.DataFrame(
        [
            {
                "dataset": settings.dataset,
                "seed": p.qat.config.seed,
                "backend": p.qat.config.backend,
                "qat_init": "trained float student" if p.initial is not None else "scratch",
                "qat_epochs": p.qat.config.train.epochs,
                "fp32_model_mb": p.qat.model_size["fp32_mb"],
                "int8_model_mb": p.qat.model_size["int8_mb"],
                "compression": p.qat.model_size["compression"],
                "float_start_accuracy_pct": p.qat.initial_test_accuracy,
                "fake_quant_accuracy_pct": p.qat.fake_quant_test_accuracy,
                "int8_accuracy_pct": p.qat.test_accuracy,
                "qat_only_training_gflops_millions": p.qat.training_gflops_millions,
                "qat_only_energy_kwh": exp.energy(p.qat.energy).energy_kwh,
                "qat_only_co2_g": exp.energy(p.qat.energy).co2_g,
                "energy_source": exp.energy(p.qat.energy).source,
            }
            for p in qat
        ]
    )
    return pd.DataFrame(rows), details


def compare_table8(table: pd.DataFrame, settings) -> pd.DataFrame:
    """Ours beside the paper's Table 8 (CIFAR-10), one paper row per method."""
    from .extra_tables import compare_with_paper_dataset

    return compare_with_paper_dataset(table, "table8", TABLE8_METRICS, settings.paper_dataset, keys=("method",))

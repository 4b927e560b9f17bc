"""Quantization-aware training (QAT) pieces: PyTorch's FX graph-mode QAT, and the config of a QAT run.

The network is traced (``torch.ao.quantization.quantize_fx``), conv-batchnorm(-relu) triples are fused,
fake-quantize modules simulate int8 weights and activations during training, and after training the network is
converted to a real int8 model that runs on the CPU (the quantized kernels are CPU kernels). FX mode handles
MobileNetV2's residual additions without rewriting the model, which eager mode would need.

A QAT run is cached in the run store like any other run, under its own config (:class:`QATConfig`), whose key
never collides with a :class:`RunConfig`'s. The run itself is :mod:`greenkd_utils.runs.tasks.qat`; Table 8
is :mod:`greenkd_utils.paper.table8_quantization`.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Tuple

import torch
from torch import nn

from greenkd_utils.core.augment import standardize
from greenkd_utils.core.config import RunConfig, StoredConfig, TrainSettings, check_val_fraction, nested, one_of
from greenkd_utils.energy.flops import train_step_flops

log = logging.getLogger(__name__)

# Quantized-kernel back ends, in order of preference for "auto": x86 and fbgemm on Intel/AMD, qnnpack on ARM.
BACKENDS = ("x86", "fbgemm", "qnnpack", "onednn")

BYTES_PER_MB = 1e6


# ---------------------------------------------------------------------------------------------
# The torch API, and its warnings
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _QuantizationAPI:
    prepare_qat_fx: Callable[..., nn.Module]  # (float model, qconfig mapping, example inputs) -> fake-quantized
    convert_fx: Callable[[nn.Module], nn.Module]  # prepared model -> int8 model
    qat_qconfig_mapping: Callable[[str], Any]  # back end -> QConfigMapping
    disable_observer: Callable[[nn.Module], None]  # for model.apply: fixes the fake-quantize ranges
    freeze_bn_stats: Callable[[nn.Module], None]  # for model.apply: fixes the batch-norm statistics


def quantization_api() -> _QuantizationAPI:
    """The FX QAT functions of this torch, or an ImportError that says what is missing."""
    try:
        from torch.ao.nn.intrinsic.qat import freeze_bn_stats
        from torch.ao.quantization import (
            disable_observer,
            get_default_qat_qconfig_mapping,
        )
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
# The run's config
# ---------------------------------------------------------------------------------------------
QAT_INITS = ("student", "scratch")
# The data and model of the student run a QAT run mirrors: from_student copies them (with the seed and profile),
# and ``init_from`` must share them.
STUDENT_DATA = ("dataset", "model", "val_fraction", "train_subset", "test_subset")


@dataclass(frozen=True)
class QATConfig(StoredConfig):
    """One QAT run: the data fields of a student ``RunConfig``, the QAT schedule and the back end.

    ``init_from`` is the finished float student run whose weights QAT starts from (the usual
    recipe: quantization-aware fine-tuning of a trained network); None trains from scratch.
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
    kind: str = "qat_fx"  # in the hashed dict, so a QAT run never shares a key with a CE or KD run

    def __post_init__(self):
        object.__setattr__(self, "freeze_fraction", float(self.freeze_fraction))
        object.__setattr__(self, "val_fraction", float(self.val_fraction))
        nested(self, "train", TrainSettings)
        nested(self, "init_from", RunConfig)
        one_of("QAT kind", self.kind, ("qat_fx",))
        one_of("quantization backend", self.backend, BACKENDS)
        if not 0.0 < self.freeze_fraction <= 1.0:
            raise ValueError(f"freeze_fraction must lie in (0, 1]; got {self.freeze_fraction}")
        check_val_fraction(self.val_fraction)
        if self.init_from is not None:
            start = self.init_from
            if start.role != "student":
                raise ValueError(f"QAT starts from a cross-entropy student run; got a {start.role!r} config")
            mine = tuple(getattr(self, name) for name in STUDENT_DATA)
            theirs = tuple(getattr(start, name) for name in STUDENT_DATA)
            if mine != theirs:
                raise ValueError(f"QAT must use the data and model of the run it starts from; {mine} != {theirs}")

    @classmethod
    def from_student(cls, student: RunConfig, init: str = "student", backend: str = "auto",
                     train: Optional[TrainSettings] = None, **changes) -> "QATConfig":
        """The QAT run of a cross-entropy student ``RunConfig``: same data, model and seed.

        ``init="student"`` starts from the student's trained weights, ``"scratch"`` from a fresh
        initialisation; ``train`` is the QAT schedule (default: the student's own).
        """
        one_of("QAT init", init, QAT_INITS)
        if student.role != "student":
            raise ValueError(f"QAT mirrors a cross-entropy student run; got a {student.role!r} config")
        return cls(
            train=train or student.train,
            backend=resolve_backend(backend),
            init_from=student if init == "student" else None,
            **{name: getattr(student, name) for name in STUDENT_DATA + ("seed", "profile")},
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

    @property
    def name(self) -> str:
        start = "ft" if self.init_from is not None else "scratch"
        return f"qat_{self.dataset}_{self.model}_{self.backend}_{start}_s{self.seed}"



"""Frozen, serialisable configurations of detection runs; a config's hash is its run key in the store.

Like :class:`greenkd_utils.core.config.RunConfig`, a :class:`DetectionRunConfig` holds
everything that changes a run's numbers (data, image size, anchors, models and
their widths, loss, temperature, optimiser, schedule, augmentation, seed) and
nothing that only changes where or how fast it runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Tuple

from greenkd_utils.core.config import (
    ROLES,
    DistillSpec,
    StoredConfig,
    check_val_fraction,
    one_of,
    store_floats,
)
from greenkd_utils.core.detection.data import DETECTION_DATASETS
from greenkd_utils.core.detection.models import DETECTORS, AnchorSettings
from greenkd_utils.core.detection.shapes import ShapesSettings

OPTIMIZERS = ("sgd", "adam")
AUGMENTATIONS = ("none", "flip", "ssd")


@dataclass(frozen=True)
class DetectionTrainSettings:
    """Optimiser, schedule and augmentation of one detection run."""

    epochs: int = 70  # the paper's detection runs
    batch_size: int = 32
    optimizer: str = "sgd"  # or "adam", which leaves momentum unused
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: Tuple[int, ...] = ()
    lr_decay: float = 0.1
    warmup_epochs: int = 1
    # "none"; "flip" (random horizontal flips); "ssd" (SSD's photometric distortion, zoom-out,
    # IoU crop and flip, torchvision.transforms.v2, in DataLoader workers).
    augment: str = "none"
    neg_pos_ratio: int = 3  # hard negatives per positive anchor in SSD's loss
    # Clip the gradient's global L2 norm to this value (None: no clipping). HKD's tau^2 factor makes the
    # gradient grow with tau; clipping keeps a tau ~ U[2, 20] run as stable as a tau = 1 run.
    grad_clip_norm: Optional[float] = None
    fast: bool = False  # bf16 autocast on CUDA
    compile: bool = False

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1; got {self.epochs}, {self.batch_size}")
        one_of("optimizer", self.optimizer, OPTIMIZERS)
        one_of("detection augmentation", self.augment, AUGMENTATIONS)
        object.__setattr__(self, "milestones", tuple(int(m) for m in self.milestones))
        store_floats(self, "lr", "momentum", "weight_decay", "lr_decay", "grad_clip_norm")
        if self.grad_clip_norm is not None and not self.grad_clip_norm > 0:
            raise ValueError(f"grad_clip_norm must be > 0 or None; got {self.grad_clip_norm}")


@dataclass(frozen=True)
class DetectionRunConfig(DistillSpec, StoredConfig):
    """One detection run: a teacher or student trained with SSD's loss, or a KD student.

    Everything that changes the numbers is here (and in ``key``); where the data lives, the device and
    progress bars are not.
    """

    role: str
    dataset: str
    model: str
    seed: int = 0
    width: float = 1.0
    image_size: int = 300
    anchors: AnchorSettings = field(default_factory=AnchorSettings)
    shapes: Optional[ShapesSettings] = None
    train: DetectionTrainSettings = field(default_factory=DetectionTrainSettings)
    profile: str = "paper"
    loss: str = field(default="ssd", kw_only=True)  # SSD's loss; a kd run names its KD loss (KD_LOSSES)
    teacher: Optional["DetectionRunConfig"] = field(default=None, kw_only=True)
    val_fraction: float = 0.1
    task: str = "detection"

    def __post_init__(self):
        self.build_nested(DetectionRunConfig, train=DetectionTrainSettings, anchors=AnchorSettings,
                          shapes=ShapesSettings)
        store_floats(self, "val_fraction", "width")
        for what, value, valid in (("role", self.role, ROLES), ("detection dataset", self.dataset, DETECTION_DATASETS),
                                   ("detector", self.model, DETECTORS)):
            one_of(what, value, valid)
        if self.dataset == "shapes" and self.shapes is None:
            object.__setattr__(self, "shapes", ShapesSettings())
        if self.dataset != "shapes" and self.shapes is not None:
            raise ValueError("shapes settings only apply to the shapes dataset")
        self.check_distillation(self.role == "kd", "ssd", "SSD's loss",
                                shared_with_teacher=("dataset", "image_size", "anchors", "shapes"),
                                mismatch="teacher and student must share the dataset, image size and anchors")
        check_val_fraction(self.val_fraction)

    @property
    def name(self) -> str:
        return "det_" + super().name

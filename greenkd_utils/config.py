"""Frozen, serialisable run configurations. The hash of a config is its run key in the store.

A ``RunConfig`` says everything that changes a run's numbers (data, model,
loss, temperature, optimiser, schedule, augmentation, seed). Things that only
change *where* or *how fast* it runs on the same numerics (data root, device,
progress bars) are not part of it, so a cached run is found again from another
machine or folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

from .losses import KD_LOSSES, KL_REDUCTIONS
from .temperature import TEMPERATURE_MODES, check_tau_range, make_temperature

ROLES = ("teacher", "student", "kd")


def store_floats(obj, *names: str) -> None:
    """Store real-valued fields as floats, so that 4 and 4.0 give the same canonical JSON (the run key)."""
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, int) and not isinstance(value, bool):
            object.__setattr__(obj, name, float(value))


def config_key(config_dict: Dict[str, Any]) -> str:
    """Hash of a config's canonical JSON form: equal configs share a key, any change gives a new one."""
    canonical = json.dumps(config_dict, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


class StoredConfig:
    """What :class:`~greenkd_utils.store.RunStore` needs from a frozen dataclass config besides a ``name``:
    a plain dict, a content hash as key, and a copy with changes."""

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def key(self) -> str:
        return config_key(self.to_dict())

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class AugmentSettings:
    """The paper's augmentation: random crop after padding, horizontal flip, rotation."""

    crop_padding: int = 4
    flip: bool = True
    rotation_deg: float = 15.0

    def __post_init__(self):
        store_floats(self, "rotation_deg")


@dataclass(frozen=True)
class TrainSettings:
    """Optimiser, schedule and augmentation. Defaults are the paper profile's (docs/protocol.md)."""

    epochs: int = 100
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: Tuple[int, ...] = (40, 60, 80)
    lr_decay: float = 0.2
    warmup_epochs: int = 1
    augment: AugmentSettings = field(default_factory=AugmentSettings)
    # bf16 autocast, channels_last, fused optimiser on CUDA (see engine.ExecutionPlan).
    fast: bool = False
    compile: bool = False

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1; got {self.epochs}, {self.batch_size}")
        object.__setattr__(self, "milestones", tuple(int(m) for m in self.milestones))
        store_floats(self, "lr", "momentum", "weight_decay", "lr_decay")
        if isinstance(self.augment, dict):
            object.__setattr__(self, "augment", AugmentSettings(**self.augment))


@dataclass(frozen=True)
class TemperatureSpec:
    """Serialisable description of a temperature schedule (see temperature.make_temperature)."""

    mode: str = "stochastic"
    tau: Optional[float] = None
    low: float = 2.0
    high: float = 20.0

    def __post_init__(self):
        store_floats(self, "tau", "low", "high")
        if self.mode not in TEMPERATURE_MODES:
            raise ValueError(f"unknown temperature mode {self.mode!r}; valid: {', '.join(TEMPERATURE_MODES)}")
        if self.mode == "fixed":
            if self.tau is None or not self.tau > 0:
                raise ValueError(f"a fixed temperature needs tau > 0; got {self.tau}")
        else:
            check_tau_range(self.low, self.high)

    @classmethod
    def fixed(cls, tau: float) -> "TemperatureSpec":
        return cls(mode="fixed", tau=float(tau))

    @classmethod
    def stochastic(cls, low: float = 2.0, high: float = 20.0) -> "TemperatureSpec":
        return cls(mode="stochastic", low=float(low), high=float(high))

    def build(self, seed: int):
        if self.mode == "fixed":
            return make_temperature("fixed", tau=self.tau)
        return make_temperature("stochastic", low=self.low, high=self.high, seed=seed)

    def short(self) -> str:
        return f"tau={self.tau:g}" if self.mode == "fixed" else f"tau~U[{self.low:g},{self.high:g}]"


@dataclass(frozen=True)
class RunConfig(StoredConfig):
    """One training run: a teacher or student trained with cross-entropy, or a KD student."""

    role: str
    dataset: str
    model: str
    seed: int = 0
    train: TrainSettings = field(default_factory=TrainSettings)
    profile: str = "paper"
    loss: str = "ce"
    alpha: float = 0.95
    kl_reduction: str = "batchmean"
    temperature: Optional[TemperatureSpec] = None
    teacher: Optional["RunConfig"] = None
    # A stratified hold-out of the training split: tau is chosen on it, never on the test set.
    val_fraction: float = 0.1
    train_subset: Optional[int] = None
    test_subset: Optional[int] = None

    def __post_init__(self):
        store_floats(self, "alpha", "val_fraction")
        if self.role not in ROLES:
            raise ValueError(f"unknown role {self.role!r}; valid: {', '.join(ROLES)}")
        if self.role == "kd":
            if self.loss not in KD_LOSSES:
                raise ValueError(f"unknown KD loss {self.loss!r}; valid: {', '.join(sorted(KD_LOSSES))}")
            if self.temperature is None or self.teacher is None:
                raise ValueError("a KD run needs a temperature and a teacher config")
            if self.teacher.dataset != self.dataset:
                raise ValueError("the teacher must be trained on the same dataset as the student")
        elif self.loss != "ce":
            raise ValueError(f"a {self.role} run is trained with cross-entropy (loss='ce'); got {self.loss!r}")
        if self.kl_reduction not in KL_REDUCTIONS:
            raise ValueError(f"unknown kl_reduction {self.kl_reduction!r}; valid: {', '.join(KL_REDUCTIONS)}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must lie in [0, 1); got {self.val_fraction}")

    # -- identity -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "RunConfig":
        d = dict(d)
        d["train"] = TrainSettings(**d["train"]) if isinstance(d.get("train"), dict) else d.get("train")
        if isinstance(d.get("temperature"), dict):
            d["temperature"] = TemperatureSpec(**d["temperature"])
        if isinstance(d.get("teacher"), dict):
            d["teacher"] = cls.from_dict(d["teacher"])
        return cls(**d)

    @property
    def name(self) -> str:
        """Readable folder/progress-bar name; the key keeps it unique."""
        parts = [self.role, self.dataset, self.model]
        if self.role == "kd":
            parts[2] = f"{self.teacher.model}-to-{self.model}"
            parts += [self.loss, self.temperature.short().replace("~", "").replace("[", "").replace("]", "")]
        parts.append(f"s{self.seed}")
        return "_".join(parts)

    @property
    def temperature_seed(self) -> int:
        # Distinct from the model-init seed so that changing one stream never shifts the other.
        return 10_000 + self.seed

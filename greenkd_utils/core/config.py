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
import numbers
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Optional, Tuple

from greenkd_utils.energy.checks import real_number, whole_number
from greenkd_utils.core.data import DATASETS
from greenkd_utils.core.losses import (
    KD_LOSSES,
    KL_REDUCTIONS,
    check_logit_standardization,
)
from greenkd_utils.core.models import check_model_name
from greenkd_utils.core.temperature import (
    CTKD_CURRICULUM_EPOCHS,
    CTKD_HIGH,
    CTKD_LOW,
    TEMPERATURE_MODES,
    check_tau_range,
    make_temperature,
)

ROLES = ("teacher", "student", "kd")


def as_float(value: Any) -> Any:
    """A real number as a float; anything else (a string, a bool) unchanged, for the checks to refuse by name."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    return value


def nested(obj, name: str, cls) -> None:
    """Turn field ``name`` of a frozen config into ``cls`` if it arrived as a dict (read from JSON or YAML)."""
    value = getattr(obj, name)
    if isinstance(value, dict):
        object.__setattr__(obj, name, cls.from_dict(value) if hasattr(cls, "from_dict") else cls(**value))


def one_of(what: str, value: Any, valid: Iterable[str]) -> None:
    """Refuse a ``value`` that is not among the ``valid`` names, saying which are."""
    if value not in valid:
        raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(valid)}")


def store_floats(obj, *names: str) -> None:
    """Store real-valued fields as floats, so that 4 and 4.0 give the same canonical JSON (the run key)."""
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, int) and not isinstance(value, bool):
            object.__setattr__(obj, name, float(value))


# Fields added to the run configs after runs were first stored, each with the value that every earlier run
# had. At that value a field is left out of a config's dict, at any depth (a RunConfig or TemperatureSpec
# nested in a data-free KD, QAT or detection config too), so adding an option never changes the key of a run
# stored before it existed, and records written before it load unchanged.
LATER_FIELD_DEFAULTS: Dict[str, Any] = {
    "logit_standardization": False,
    "curriculum_epochs": None,
}


def without_later_defaults(obj: Any) -> Any:
    """``obj`` (a config dict, possibly nested) without the :data:`LATER_FIELD_DEFAULTS` left at their default."""
    if isinstance(obj, dict):
        return {
            k: without_later_defaults(v)
            for k, v in obj.items()
            if not (k in LATER_FIELD_DEFAULTS and v is LATER_FIELD_DEFAULTS[k])
        }
    if isinstance(obj, (list, tuple)):
        return type(obj)(without_later_defaults(v) for v in obj)
    return obj


def config_key(config_dict: Dict[str, Any]) -> str:
    """Hash of a config's canonical JSON form: equal configs share a key, any change gives a new one."""
    canonical = json.dumps(without_later_defaults(config_dict), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


class StoredConfig:
    """What :class:`~greenkd_utils.runs.store.RunStore` needs from a frozen dataclass config besides a ``name``:
    a plain dict, a content hash as key, and a copy with changes."""

    def to_dict(self) -> Dict[str, Any]:
        # Options added later are left out at their default, so that earlier runs keep their keys and records.
        return without_later_defaults(dataclasses.asdict(self))

    @property
    def key(self) -> str:
        return config_key(self.to_dict())

    @classmethod
    def from_dict(cls, d: Dict[str, Any]):
        """The config of a :meth:`to_dict` dict, whose nested configs ``__post_init__`` builds."""
        return cls(**d)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    @property
    def temperature_seed(self) -> int:
        # Distinct from the model-init seed so that changing one stream never shifts the other; the same for
        # every kind of run of a seed.
        return 10_000 + self.seed


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
    batch_size: int = 128  # images per step; each epoch drops its last partial batch
    lr: float = 0.1  # the peak, reached at the end of the warm-up
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: Tuple[int, ...] = (40, 60, 80)  # from each (0-based) epoch on, lr is multiplied by lr_decay once more
    lr_decay: float = 0.2
    warmup_epochs: int = 1  # lr rises linearly, step by step, over these epochs (0: no warm-up)
    augment: AugmentSettings = field(default_factory=AugmentSettings)
    # bf16 autocast, channels_last, fused optimiser on CUDA (see runs.execution.ExecutionPlan).
    fast: bool = False
    compile: bool = False

    def __post_init__(self):
        for name, minimum in (("epochs", 1), ("batch_size", 1), ("warmup_epochs", 0)):
            object.__setattr__(self, name, whole_number(name, getattr(self, name), minimum))
        object.__setattr__(self, "milestones", tuple(int(m) for m in self.milestones))
        store_floats(self, "lr", "momentum", "weight_decay", "lr_decay")
        if isinstance(self.augment, dict):
            object.__setattr__(self, "augment", AugmentSettings(**self.augment))


@dataclass(frozen=True)
class TemperatureSpec:
    """Serialisable description of a temperature schedule (see temperature.make_temperature).

    ``fixed``: one ``tau``. ``stochastic`` / ``stochastic_per_sample``: tau ~ U[low, high] per batch / per
    sample. ``ctkd``: a learned global tau in [low, high] (CTKD), whose gradient-reversal strength rises over
    ``curriculum_epochs`` epochs. Build one with the constructors (:meth:`fixed`, :meth:`stochastic`,
    :meth:`stochastic_per_sample`, :meth:`ctkd`).
    """

    mode: str = "stochastic"
    tau: Optional[float] = None
    low: float = 2.0
    high: float = 20.0
    curriculum_epochs: Optional[int] = None  # ctkd only

    def __post_init__(self):
        store_floats(self, "tau", "low", "high")
        one_of("temperature mode", self.mode, TEMPERATURE_MODES)
        if self.mode == "fixed":
            try:
                real_number("tau", self.tau, above=0)
            except ValueError:
                raise ValueError(f"a fixed temperature needs tau > 0 and finite (a number); got {self.tau!r}") from None
        else:
            check_tau_range(self.low, self.high)
        if self.mode == "ctkd":
            if self.curriculum_epochs is None:
                object.__setattr__(self, "curriculum_epochs", CTKD_CURRICULUM_EPOCHS)
            epochs = self.curriculum_epochs
            if isinstance(epochs, bool) or not isinstance(epochs, (int, float)) or epochs != int(epochs) or epochs < 1:
                raise ValueError(f"CTKD needs curriculum_epochs >= 1 (a whole number); got {epochs!r}")
            object.__setattr__(self, "curriculum_epochs", int(self.curriculum_epochs))
        elif self.curriculum_epochs is not None:
            raise ValueError(
                f"curriculum_epochs applies to the ctkd temperature only; got {self.curriculum_epochs!r} "
                f"with mode {self.mode!r}"
            )

    @classmethod
    def fixed(cls, tau: float) -> "TemperatureSpec":
        return cls(mode="fixed", tau=as_float(tau))

    @classmethod
    def stochastic(cls, low: float = 2.0, high: float = 20.0) -> "TemperatureSpec":
        return cls(mode="stochastic", low=as_float(low), high=as_float(high))

    @classmethod
    def stochastic_per_sample(cls, low: float = 2.0, high: float = 20.0) -> "TemperatureSpec":
        return cls(mode="stochastic_per_sample", low=as_float(low), high=as_float(high))

    @classmethod
    def ctkd(cls, low: float = CTKD_LOW, high: float = CTKD_HIGH,
             curriculum_epochs: int = CTKD_CURRICULUM_EPOCHS) -> "TemperatureSpec":
        """CTKD's global learned temperature with the paper's defaults: tau in [1, 21], lambda over 10 epochs."""
        return cls(mode="ctkd", low=as_float(low), high=as_float(high), curriculum_epochs=int(curriculum_epochs))

    def build(self, seed: int):
        if self.mode == "fixed":
            return make_temperature("fixed", tau=self.tau)
        if self.mode == "ctkd":
            return make_temperature("ctkd", low=self.low, high=self.high, curriculum_epochs=self.curriculum_epochs)
        return make_temperature(self.mode, low=self.low, high=self.high, seed=seed)

    def short(self) -> str:
        if self.mode == "fixed":
            return f"tau={self.tau:g}"
        if self.mode == "stochastic_per_sample":
            return f"tau~U[{self.low:g},{self.high:g}]-per-sample"
        if self.mode == "ctkd":
            return f"tau=ctkd[{self.low:g},{self.high:g}]"
        return f"tau~U[{self.low:g},{self.high:g}]"


@dataclass(frozen=True, kw_only=True)
class DistillSpec:
    """What every run config says about distillation, in one place: the loss, its weight ``alpha``, the
    temperature, logit standardization and the teacher run. A run config inherits these fields (so its dict,
    and with it the run key, stays flat); a run without a KD term leaves ``temperature`` and ``teacher`` None
    and trains with its task's plain loss."""

    loss: str
    alpha: float = 0.95
    kl_reduction: str = "batchmean"
    temperature: Optional[TemperatureSpec] = None
    teacher: Optional[Any] = None
    # Z-score teacher and student logits per sample before the softened softmax (Sun et al., CVPR 2024).
    logit_standardization: bool = False

    def build_nested(self, teacher_type, **types) -> None:
        """Build the nested configs that arrived as dicts (read from JSON or YAML): the fields named in ``types``
        (as ``field=class``), then the temperature and the teacher (a ``teacher_type``)."""
        for name, cls in (*types.items(), ("temperature", TemperatureSpec), ("teacher", teacher_type)):
            nested(self, name, cls)

    @property
    def kd_name(self) -> str:
        """What names a KD run's folder: teacher-to-student, loss, tau and "ls" for logit standardization."""
        tau = self.temperature.short().replace("~", "").replace("[", "").replace("]", "")
        return "_".join([f"{self.teacher.model}-to-{self.model}", self.loss, tau] + (["ls"] if self.logit_standardization else []))

    @property
    def name(self) -> str:
        """Readable folder/progress-bar name: role, dataset, the model (a KD run's :attr:`kd_name`) and seed;
        the key keeps it unique."""
        return f"{self.role}_{self.dataset}_{self.kd_name if self.role == 'kd' else self.model}_s{self.seed}"

    @property
    def distils(self) -> bool:
        """Whether the run has a KD term (and so a tau to draw, fix or search): a temperature and a teacher."""
        return self.temperature is not None and self.teacher is not None

    def check_distillation(self, distils: bool, plain_loss: str, plain_loss_name: str,
                           shared_with_teacher: Tuple[str, ...], mismatch: str) -> None:
        """A KD run has a registered KD loss, a temperature and a teacher that shares ``shared_with_teacher``
        with it; any other run trains with ``plain_loss``; logit standardization is a KD option; alpha lies in
        [0, 1]; the KL reduction is known."""
        store_floats(self, "alpha")
        real_number("alpha", self.alpha, at_least=0, at_most=1)
        if distils:
            one_of("KD loss", self.loss, sorted(KD_LOSSES))
            if self.temperature is None or self.teacher is None:
                raise ValueError("a KD run needs a temperature and a teacher config")
            if any(getattr(self, f) != getattr(self.teacher, f) for f in shared_with_teacher):
                raise ValueError(mismatch)
            check_logit_standardization(self.loss, self.logit_standardization)
        elif self.loss != plain_loss:
            raise ValueError(f"a {getattr(self, 'role', '')} run is trained with {plain_loss_name} "
                             f"(loss={plain_loss!r}); got {self.loss!r}")
        elif self.logit_standardization:
            raise ValueError(f"logit standardization applies to KD runs only; got role {getattr(self, 'role', None)!r}")
        one_of("kl_reduction", self.kl_reduction, KL_REDUCTIONS)


def check_val_fraction(value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"val_fraction must lie in [0, 1); got {value}")


def check_dataset_and_model(dataset: Any, model: Any) -> None:
    """Refuse a dataset or model name that the run could only trip over when it starts loading data."""
    if not isinstance(dataset, str) or dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; valid: {', '.join(DATASETS)}")
    check_model_name(model)


@dataclass(frozen=True)
class RunConfig(DistillSpec, StoredConfig):
    """One training run: a teacher or student trained with cross-entropy, or a KD student."""

    role: str
    dataset: str
    model: str  # a registered model (core.models.MODELS) or "timm:<name>"
    seed: int = 0
    train: TrainSettings = field(default_factory=TrainSettings)
    profile: str = "paper"
    loss: str = field(default="ce", kw_only=True)
    teacher: Optional["RunConfig"] = field(default=None, kw_only=True)
    # A stratified hold-out of the training split: tau is chosen on it, never on the test set.
    val_fraction: float = 0.1
    train_subset: Optional[int] = None
    test_subset: Optional[int] = None

    def __post_init__(self):
        self.build_nested(RunConfig, train=TrainSettings)
        store_floats(self, "val_fraction")
        one_of("role", self.role, ROLES)
        check_dataset_and_model(self.dataset, self.model)
        object.__setattr__(self, "seed", whole_number("seed", self.seed, 0))
        for name in ("train_subset", "test_subset"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, whole_number(name, getattr(self, name), 1))
        self.check_distillation(self.role == "kd", "ce", "cross-entropy", shared_with_teacher=("dataset",),
                                mismatch="the teacher must be trained on the same dataset as the student")
        check_val_fraction(self.val_fraction)


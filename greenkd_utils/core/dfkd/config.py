"""Frozen, serialisable configuration of one data-free KD run; its hash is the run key in the store.

A :class:`DFKDConfig` says everything that changes a run's numbers: the
teacher's own run config (so the teacher is trained, or found, through the
ordinary run store), the student, the synthesizer and its weights, the
student's KD loss and temperature, the schedule and the seed. Where and how
fast it runs (device, data root, progress bars) is not part of it.

It quacks like :class:`greenkd_utils.core.config.RunConfig` where the store and the
tau sweep need it to: ``name``, ``key``, ``to_dict()``, ``temperature``,
``val_fraction``, ``dataset``, ``train_subset``, ``test_subset``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Tuple

from greenkd_utils.core.config import (
    AugmentSettings,
    DistillSpec,
    RunConfig,
    StoredConfig,
    TemperatureSpec,
    TrainSettings,
    check_val_fraction,
    one_of,
    store_floats,
)

METHODS = ("deepinversion", "cmi")
ADVERSARIAL_KINDS = ("masked_kl", "js")

# Fields only the CMI synthesizer reads. For DeepInversion they are set to None, so that they
# neither enter its run key nor suggest, in a stored record, that they did anything.
CMI_ONLY = ("cr", "cr_temperature", "bank_size", "n_negatives", "head_dim", "nz", "ngf", "view_augment", "reset_generator")


@dataclass(frozen=True)
class SynthesisSettings:
    """How one synthesizer makes images. Defaults: CMI as run for WRN-40-2 -> WRN-16-1 on CIFAR-10.

    Loss weights: ``bn`` (batch-norm statistics), ``oh`` (one-hot cross-entropy on the
    teacher), ``adv`` (adversarial term with the student), ``tv`` and ``l2`` (image priors),
    ``cr`` (CMI's contrastive term). ``adv_temperature`` and ``cr_temperature`` belong to the
    synthesizer and stay fixed whatever the student's KD temperature.
    """

    method: str = "cmi"
    batch_size: int = 256
    iterations: int = 200  # optimisation steps per synthesis round (one round per epoch)
    lr: float = 1e-3
    betas: Tuple[float, float] = (0.5, 0.999)
    bn: float = 1.0
    oh: float = 1.0
    adv: float = 0.5
    adversarial: str = "masked_kl"
    adv_temperature: float = 1.0
    tv: float = 0.0
    l2: float = 0.0
    jitter: int = 0  # random shift (pixels, circular) of the teacher's input at every step
    flip: bool = False  # random horizontal flip of the teacher's input at every step
    # -- CMI only ------------------------------------------------------------------------
    cr: Optional[float] = 0.8
    cr_temperature: Optional[float] = 0.2
    bank_size: Optional[int] = 40960
    n_negatives: Optional[int] = 4096
    head_dim: Optional[int] = 256
    nz: Optional[int] = 256
    ngf: Optional[int] = 64
    view_augment: Optional[AugmentSettings] = field(default_factory=lambda: AugmentSettings(4, True, 0.0))
    reset_generator: Optional[bool] = True

    def __post_init__(self):
        one_of("data-free KD method", self.method, METHODS)
        one_of("adversarial term", self.adversarial, ADVERSARIAL_KINDS)
        if self.batch_size < 2 or self.iterations < 1:
            raise ValueError(f"synthesis needs batch_size >= 2 and iterations >= 1; got {self.batch_size}, {self.iterations}")
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        store_floats(self, "lr", "bn", "oh", "adv", "adv_temperature", "tv", "l2")
        for name in ("bn", "oh", "adv", "tv", "l2"):
            if getattr(self, name) < 0:
                raise ValueError(f"the loss weight {name} must be >= 0; got {getattr(self, name)}")
        if not self.adv_temperature > 0:
            raise ValueError(f"adv_temperature must be > 0; got {self.adv_temperature}")
        if self.method == "deepinversion":
            for name in CMI_ONLY:
                object.__setattr__(self, name, None)
            return
        store_floats(self, "cr", "cr_temperature")
        if isinstance(self.view_augment, dict):
            object.__setattr__(self, "view_augment", AugmentSettings(**self.view_augment))
        missing = [name for name in CMI_ONLY if getattr(self, name) is None]
        if missing:
            raise ValueError(f"CMI needs {', '.join(missing)}")
        if not self.cr_temperature > 0 or self.cr < 0:
            raise ValueError(f"CMI needs cr >= 0 and cr_temperature > 0; got {self.cr}, {self.cr_temperature}")
        if self.bank_size < 1 or self.n_negatives < 0 or self.head_dim < 1 or self.nz < 1 or self.ngf < 1:
            raise ValueError("CMI needs bank_size, head_dim, nz, ngf >= 1 and n_negatives >= 0")


@dataclass(frozen=True)
class DFKDConfig(DistillSpec, StoredConfig):
    """One data-free KD run: a synthesizer inverts ``teacher``'s trained network, ``model`` learns
    from the synthesized images only, with ``loss`` at ``temperature``.

    ``train`` is the student's optimiser, schedule and augmentation of the synthetic images;
    ``kd_steps`` the student's steps per epoch (one synthesis round precedes them).
    """

    dataset: str
    model: str
    synthesis: SynthesisSettings
    teacher: RunConfig = field(kw_only=True)
    temperature: TemperatureSpec = field(kw_only=True)
    seed: int = 0
    train: TrainSettings = field(default_factory=TrainSettings)
    kd_steps: int = 400
    loss: str = field(default="hkd", kw_only=True)
    # No labels exist for synthetic images; the original methods distil on the teacher's outputs only.
    alpha: float = field(default=1.0, kw_only=True)
    profile: str = "paper"
    val_fraction: float = 0.1  # real training images held out to choose tau; only evaluation passes read them
    train_subset: Optional[int] = None
    test_subset: Optional[int] = None
    role: str = "dfkd"

    def __post_init__(self):
        store_floats(self, "val_fraction")
        self.build_nested(RunConfig, synthesis=SynthesisSettings, train=TrainSettings)
        if self.role != "dfkd":
            raise ValueError(f"a DFKDConfig has role 'dfkd'; got {self.role!r}")
        if self.teacher.role != "teacher":
            raise ValueError(f"the teacher config must have role 'teacher'; got {self.teacher.role!r}")
        self.check_distillation(True, "", "", shared_with_teacher=("dataset",),
                                mismatch="the teacher must be trained on the dataset whose test set scores the student")
        if self.kd_steps < 1:
            raise ValueError(f"kd_steps must be >= 1; got {self.kd_steps}")
        check_val_fraction(self.val_fraction)

    # -- identity ------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return f"dfkd_{self.dataset}_{self.method}_{self.kd_name}_s{self.seed}"

    @property
    def method(self) -> str:
        return self.synthesis.method

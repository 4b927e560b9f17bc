"""The detection settings of a profile (``configs/detection.yaml``): Table 4's PASCAL VOC column.

A :class:`DetectionProfile` turns into run configs as a classification :class:`~.profiles.Profile` does: one
teacher per profile (``teacher_seed``) serving every student seed, and a KD student per seed, loss and
temperature. Its energy constants are those of the classification profile of the same name (set by
:mod:`greenkd_utils.settings.notebooks`), so every notebook of a profile reports CO2 alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

from greenkd_utils.core.config import TemperatureSpec
from greenkd_utils.core.detection.config import DetectionRunConfig, DetectionTrainSettings
from greenkd_utils.core.detection.models import AnchorSettings
from greenkd_utils.core.detection.shapes import ShapesSettings
from greenkd_utils.energy.report import DEFAULT_CARBON_INTENSITY, DEFAULT_PUE
from greenkd_utils.settings.loader import SCHEDULE_KNOBS, apply_overrides, load_section
from greenkd_utils.settings.profiles import distillation_settings, single_run_temperature

# Knobs that change the detection settings (None leaves the file's value); epochs and lr are the students'.
DETECTION_KNOBS = ("seeds", "epochs", "teacher_epochs", "lr", "tau_grid", "losses", "image_size", "teacher_seed",
                   "num_workers", "temperature_mode", "logit_standardization")


@dataclass(frozen=True)
class DetectionProfile:
    """The detection settings of one profile."""

    name: str
    description: str
    dataset: str
    image_size: int
    anchors: AnchorSettings
    shapes: Optional[ShapesSettings]
    teacher_model: str
    teacher_width: float
    student_model: str
    student_width: float
    seeds: Tuple[int, ...]
    teacher_seed: int
    losses: Tuple[str, ...]
    tau_grid: Tuple[float, ...]
    tau_range: Tuple[float, float]
    alpha: float
    kl_reduction: str
    val_fraction: float
    num_workers: int
    teacher_train: Dict[str, Any] = field(default_factory=dict)
    student_train: Dict[str, Any] = field(default_factory=dict)
    temperature_mode: str = "stochastic"
    logit_standardization: bool = False
    # The energy constants of the classification profile of the same name.
    pue: float = DEFAULT_PUE
    carbon_intensity_g_per_kwh: float = DEFAULT_CARBON_INTENSITY

    def stochastic(self) -> TemperatureSpec:
        return single_run_temperature(self.temperature_mode, self.tau_range)

    def train_settings(self, role: str) -> DetectionTrainSettings:
        raw = dict(self.teacher_train if role == "teacher" else self.student_train)
        fractions = raw.pop("milestone_fractions", ())
        raw.setdefault("milestones", tuple(sorted({max(1, round(f * raw["epochs"])) for f in fractions})))
        return DetectionTrainSettings(**raw)

    def _common(self) -> Dict[str, Any]:
        """The fields every run config of this profile takes from it as they are."""
        shared = {name: getattr(self, name) for name in ("dataset", "image_size", "anchors", "shapes", "val_fraction")}
        return {**shared, "profile": self.name}

    def teacher_config(self) -> DetectionRunConfig:
        return DetectionRunConfig(
            role="teacher", model=self.teacher_model, width=self.teacher_width, seed=self.teacher_seed,
            train=self.train_settings("teacher"), **self._common(),
        )

    def student_config(self, seed: int) -> DetectionRunConfig:
        """The student trained alone with SSD's loss (not part of Table 4; for comparisons)."""
        return DetectionRunConfig(
            role="student", model=self.student_model, width=self.student_width, seed=seed,
            train=self.train_settings("student"), **self._common(),
        )

    def kd_config(self, seed: int, loss: str = "hkd", temperature: Optional[TemperatureSpec] = None) -> DetectionRunConfig:
        return DetectionRunConfig(
            role="kd", model=self.student_model, width=self.student_width, seed=seed,
            train=self.train_settings("student"), loss=loss, alpha=self.alpha, kl_reduction=self.kl_reduction,
            temperature=temperature or self.stochastic(), teacher=self.teacher_config(),
            logit_standardization=self.logit_standardization, **self._common(),
        )


def load_detection_profile(name: str, **overrides) -> DetectionProfile:
    """The named profile's detection settings with ``overrides`` (:data:`DETECTION_KNOBS`; None values are
    skipped, unknown names raise)."""
    raw, overrides = load_section(name, overrides, DETECTION_KNOBS, "detection parameter", family="detection")
    raw = apply_overrides(raw, overrides, SCHEDULE_KNOBS)
    as_tuple = lambda v, cast: tuple(cast(x) for x in ([v] if isinstance(v, (int, float, str)) else v))  # noqa: E731
    return DetectionProfile(
        name=name,
        description=str(raw.get("description", "")).strip(),
        dataset=raw["dataset"],
        image_size=int(raw["image_size"]),
        anchors=AnchorSettings(**raw["anchors"]),
        shapes=ShapesSettings(**raw["shapes"]) if raw.get("shapes") else None,
        teacher_model=raw["teacher_model"],
        teacher_width=float(raw["teacher_width"]),
        student_model=raw["student_model"],
        student_width=float(raw["student_width"]),
        seeds=as_tuple(raw["seeds"], int),
        teacher_seed=int(raw["teacher_seed"]),
        losses=as_tuple(raw["losses"], str),
        tau_grid=as_tuple(raw["tau_grid"], float),
        num_workers=int(raw["num_workers"]),
        teacher_train=raw["teacher_train"],
        student_train=raw["student_train"],
        **distillation_settings(raw),
    )

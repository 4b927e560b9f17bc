"""Profiles: ``smoke`` (tests), ``demo`` (default, digits on a CPU) and ``paper`` (the paper's scale).

Each profile is a YAML file in ``greenkd_utils/configs/``; a notebook's
``parameters`` cell names one and may override its knobs. A profile turns into
run configs through :meth:`Profile.teacher_config`, :meth:`Profile.student_config`
and :meth:`Profile.kd_config`, so every notebook builds the same teacher for the
same (dataset, architecture, seed, profile) and the run store shares it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

from greenkd_utils.core.config import (
    AugmentSettings,
    RunConfig,
    TemperatureSpec,
    TrainSettings,
)
from greenkd_utils.settings import knobs
from greenkd_utils.settings.knobs import STOCHASTIC_ARM_MODES
from greenkd_utils.settings.loader import SCHEDULE_KNOBS, apply_overrides, load_section

# Overrides that reach into the nested training settings rather than a top-level field.
_TRAIN_OVERRIDES = {**SCHEDULE_KNOBS, "batch_size": ("student_train", "batch_size")}


def single_run_temperature(mode: str, tau_range) -> TemperatureSpec:
    """The single-run arm's temperature: tau ~ U[tau_range] per batch unless ``mode`` says otherwise (per
    sample; CTKD keeps its own range, [1, 21])."""
    if mode == "stochastic_per_sample":
        return TemperatureSpec.stochastic_per_sample(*tau_range)
    if mode == "ctkd":
        return TemperatureSpec.ctkd()
    if mode != "stochastic":
        raise ValueError(f"unknown single-run temperature mode {mode!r}; valid: {', '.join(STOCHASTIC_ARM_MODES)}")
    return TemperatureSpec.stochastic(*tau_range)


def distillation_settings(raw: Dict[str, Any]) -> Dict[str, Any]:
    """The distillation settings of a profile's YAML section, read alike for classification and detection."""
    return {
        "tau_range": tuple(float(v) for v in raw["tau_range"]),
        "alpha": float(raw["alpha"]),
        "kl_reduction": raw["kl_reduction"],
        "val_fraction": float(raw["val_fraction"]),
        "temperature_mode": knobs.parse("temperature_mode", raw.get("temperature_mode", "stochastic")),
        "logit_standardization": knobs.parse("logit_standardization", raw.get("logit_standardization", False)),
    }


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    device: str
    datasets: Tuple[str, ...]
    seeds: Tuple[int, ...]  # of the notebooks that show one setting; the verdicts use verdict_seeds
    teacher_model: str
    student_model: str
    losses: Tuple[str, ...]  # the KD losses compared (hkd, cmc, dml)
    tau_grid: Tuple[float, ...]  # the tuned baseline's fixed taus, one full run each
    tau_range: Tuple[float, float]  # the stochastic arm draws tau ~ U[low, high]
    alpha: float  # the KD term's weight; cross-entropy weighs 1 - alpha
    kl_reduction: str  # "batchmean" (the true KL per sample) or "mean" (also divided by the class count)
    val_fraction: float  # of the training set, held out to choose tau on
    train_subset: Optional[int]  # images kept, class-stratified (None: all)
    test_subset: Optional[int]
    batch_sizes: Tuple[int, ...]  # Figure 3 (b)'s
    pue: float
    carbon_intensity_g_per_kwh: float
    # TrainSettings fields, with milestones as ``milestone_fractions`` of the run's epochs.
    teacher_train: Dict[str, Any]
    student_train: Dict[str, Any]
    extras: Dict[str, Any] = field(default_factory=dict)
    temperature_mode: str = "stochastic"
    logit_standardization: bool = False
    # The seeds of the stochastic-vs-tuned verdicts (Tables 1 and 4), sized by a power calculation
    # (docs/protocol.md); the profile's ``seeds`` when it names none. A ``seeds`` knob sets both.
    verdict_seeds: Tuple[int, ...] = ()

    # -- settings -------------------------------------------------------------------------
    def train_settings(self, role: str, **changes) -> TrainSettings:
        raw = dict(self.teacher_train if role == "teacher" else self.student_train)
        raw.update(changes)
        fractions = raw.pop("milestone_fractions", ())
        # Milestones are stored as fractions of the run so that overriding epochs keeps the schedule's shape.
        raw.setdefault("milestones", tuple(sorted({max(1, round(f * raw["epochs"])) for f in fractions})))
        raw["augment"] = AugmentSettings(**raw.get("augment", {}))
        return TrainSettings(**raw)

    def stochastic(self) -> TemperatureSpec:
        return single_run_temperature(self.temperature_mode, self.tau_range)

    def _common(self) -> Dict[str, Any]:
        """The fields every run config of this profile takes from it as they are."""
        shared = {name: getattr(self, name) for name in ("val_fraction", "train_subset", "test_subset")}
        return {**shared, "profile": self.name}

    # -- run configs ----------------------------------------------------------------------
    def teacher_config(self, dataset: str, seed: int, model: Optional[str] = None) -> RunConfig:
        return self._cross_entropy_config("teacher", dataset, seed, model or self.teacher_model)

    def student_config(self, dataset: str, seed: int, model: Optional[str] = None) -> RunConfig:
        """The student architecture trained alone with cross-entropy (the 'before KD' baseline)."""
        return self._cross_entropy_config("student", dataset, seed, model or self.student_model)

    def _cross_entropy_config(self, role: str, dataset: str, seed: int, model: str) -> RunConfig:
        return RunConfig(role=role, dataset=dataset, model=model, seed=seed, train=self.train_settings(role),
                         **self._common())

    def kd_config(
        self,
        dataset: str,
        seed: int,
        loss: str = "hkd",
        temperature: Optional[TemperatureSpec] = None,  # None: the single-run arm's (stochastic())
        teacher_model: Optional[str] = None,  # None: the profile's teacher (and likewise the student)
        student_model: Optional[str] = None,
        **train_changes,
    ) -> RunConfig:
        return RunConfig(
            role="kd",
            dataset=dataset,
            model=student_model or self.student_model,
            seed=seed,
            train=self.train_settings("student", **train_changes),
            loss=loss,
            alpha=self.alpha,
            kl_reduction=self.kl_reduction,
            temperature=temperature or self.stochastic(),
            logit_standardization=self.logit_standardization,
            teacher=self.teacher_config(dataset, seed, teacher_model),
            **self._common(),
        )

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def overridable_knobs() -> Tuple[str, ...]:
    fixed = {"name", "description", "teacher_train", "student_train", "verdict_seeds"}
    fields = [f.name for f in dataclasses.fields(Profile) if f.name not in fixed]
    return tuple(sorted(fields + list(_TRAIN_OVERRIDES)))


def load_profile(name: str, **overrides) -> Profile:
    """The named profile with ``overrides`` applied; unknown names or knobs are errors, never ignored.

    Overrides whose value is None are skipped, so a notebook can pass every knob of its
    ``parameters`` cell and leave the ones it does not set at None. Values are parsed by
    :mod:`greenkd_utils.settings.knobs` (``seeds="0,1"`` works, ``seeds="abc"`` is an error naming ``seeds``).
    """
    raw, overrides = load_section(name, overrides, overridable_knobs(), "profile parameter")
    raw = apply_overrides(raw, overrides, _TRAIN_OVERRIDES)
    if "seeds" in overrides:  # seeds asked for by name are the verdicts' seeds too
        raw["verdict_seeds"] = raw["seeds"]
    return _from_raw(raw)


def _from_raw(raw: Dict[str, Any]) -> Profile:
    def tup(key, cast=lambda v: v) -> Tuple:
        value = raw.get(key) or ()
        if isinstance(value, (str, int, float)):
            value = [value]
        return tuple(cast(v) for v in value)

    return Profile(
        name=raw["name"],
        description=raw.get("description", ""),
        device=str(raw.get("device", "auto")),
        datasets=tup("datasets", str),
        seeds=tup("seeds", int),
        teacher_model=raw["teacher_model"],
        student_model=raw["student_model"],
        losses=tup("losses", str),
        tau_grid=tup("tau_grid", float),
        train_subset=raw.get("train_subset"),
        test_subset=raw.get("test_subset"),
        batch_sizes=tup("batch_sizes", int),
        pue=float(raw["pue"]),
        carbon_intensity_g_per_kwh=float(raw["carbon_intensity_g_per_kwh"]),
        teacher_train=dict(raw["teacher_train"]),
        student_train=dict(raw["student_train"]),
        extras=dict(raw.get("extras") or {}),
        verdict_seeds=tup("verdict_seeds", int) or tup("seeds", int),
        **distillation_settings(raw),
    )

"""The data-free KD settings of a profile (``configs/dfkd.yaml``): Table 6.

The teacher is the classification profile's ``teacher_config`` for the teacher architecture named here, so
it is trained once on real images and shared through the run store; these settings say what the student
distils on synthesized images: its loss, schedule, steps per round and each synthesizer's settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from greenkd_utils.core.dfkd.config import METHODS, SynthesisSettings
from greenkd_utils.settings.loader import apply_overrides, load_section


@dataclass(frozen=True)
class DFKDSettings:
    """One profile's section of ``configs/dfkd.yaml``."""

    profile: str
    datasets: Tuple[str, ...]
    # None: the classification profile's seeds and tau grid.
    seeds: Optional[Tuple[int, ...]]
    tau_grid: Optional[Tuple[float, ...]]
    teacher_model: str
    student_model: str
    loss: str
    alpha: float
    kl_reduction: str
    kd_steps: int
    train: Dict[str, Any]
    methods: Dict[str, Dict[str, Any]]

    def synthesis(self, method: str) -> SynthesisSettings:
        if method not in self.methods:
            raise ValueError(f"unknown data-free KD method {method!r}; valid: {', '.join(sorted(self.methods))}")
        return SynthesisSettings(method=method, **self.methods[method])


# Knobs of the Table 6 notebook that change these settings (None keeps the file's value).
DFKD_KNOBS = (
    "datasets", "seeds", "tau_grid", "methods", "epochs", "lr",
    "student_steps", "synthesis_iterations", "synthesis_batch_size",
)


def load_dfkd_settings(profile: str, **overrides) -> DFKDSettings:
    """The ``profile`` section of ``configs/dfkd.yaml`` with ``overrides`` (:data:`DFKD_KNOBS`).

    ``epochs`` and ``lr`` are the student's, ``student_steps`` its steps per round;
    ``synthesis_iterations`` and ``synthesis_batch_size`` apply to every synthesizer;
    ``methods`` keeps only the listed synthesizers, in that order.
    """
    raw, overrides = load_section(profile, overrides, DFKD_KNOBS, "data-free KD setting", family="dfkd")
    unknown = sorted(set(raw["methods"]) - set(METHODS))
    if unknown:
        raise ValueError(f"configs/dfkd.yaml [{profile}] names unknown methods {unknown}; valid: {', '.join(METHODS)}")
    train = apply_overrides(raw["train"], {k: overrides[k] for k in ("epochs", "lr") if k in overrides})
    methods = raw["methods"]
    if "methods" in overrides:
        missing = [m for m in overrides["methods"] if m not in methods]
        if missing:
            raise ValueError(f"configs/dfkd.yaml [{profile}] has no settings for {', '.join(missing)}; "
                             f"configured: {', '.join(methods)}")
        methods = {m: methods[m] for m in overrides["methods"]}
    for knob, key in (("synthesis_iterations", "iterations"), ("synthesis_batch_size", "batch_size")):
        if knob in overrides:
            methods = {m: {**values, key: overrides[knob]} for m, values in methods.items()}
    seeds = overrides.get("seeds", raw.get("seeds"))
    tau_grid = overrides.get("tau_grid", raw.get("tau_grid"))
    return DFKDSettings(
        profile=profile,
        datasets=tuple(overrides.get("datasets", raw["datasets"])),
        seeds=None if seeds is None else tuple(int(s) for s in seeds),
        tau_grid=None if tau_grid is None else tuple(float(t) for t in tau_grid),
        teacher_model=raw["teacher_model"],
        student_model=raw["student_model"],
        loss=raw["loss"],
        alpha=float(raw["alpha"]),
        kl_reduction=raw["kl_reduction"],
        kd_steps=int(overrides.get("student_steps", raw["kd_steps"])),
        train=train,
        methods=methods,
    )

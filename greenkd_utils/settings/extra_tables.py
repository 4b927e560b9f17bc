"""Per-profile settings of the notebooks for Tables 7 and 8 and Figure 3 (``configs/extra_tables.yaml``).

These notebooks train architectures (ShuffleNetV2, ResNet18 and MobileNetV2 students) that cost far more per
step on a CPU than the demo profile's student, so each notebook has its own epochs, seeds, tau grid and data
set per profile (top-level keys ``smoke``, ``demo``, ``paper``; a ``null`` value means "the profile's"). A
notebook's ``parameters`` cell may override any of them.

In the demo and paper profiles teachers are never changed by these settings: they come from the profile as
they are, so a ResNet18 teacher trained for Table 1 is the one Tables 7 and 8 distil from (same config, same
run-store key). Only the smoke profile shrinks its data and teacher epochs further for Tables 7 and 8
(``profile_overrides``), to keep the test-suite fast.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from greenkd_utils.settings.loader import load_section
from greenkd_utils.settings.profiles import Profile, overridable_knobs

NOTEBOOKS = ("table7_teacher_student_pairs", "table8_quantization", "figure3_temperature_and_batch")


@dataclass(frozen=True)
class NotebookSettings:
    """What one of these notebooks trains, resolved against its profile (no ``None`` left but ``epochs``).

    ``epochs`` and ``lr`` of None keep the profile's student settings, so KD runs are the very
    runs Tables 1 and 4 train (cache hits). The ``qat_*`` fields are Table 8's: where QAT starts
    (``student``: the trained float student, ``scratch``), its epochs and lr (None: the student's),
    and when it freezes observers and batch-norm statistics (``quantization.QATConfig``).
    """

    notebook: str
    dataset: str
    paper_dataset: str  # the data set of the paper's column ours is set beside
    seeds: Tuple[int, ...]
    tau_grid: Tuple[float, ...]
    epochs: Optional[int] = None
    lr: Optional[float] = None
    batch_sizes: Tuple[int, ...] = ()
    qat_backend: str = "auto"
    qat_init: str = "student"
    qat_epochs: Optional[int] = None
    qat_lr: Optional[float] = None
    qat_freeze_fraction: float = 1.0

    def student_changes(self) -> Dict[str, Any]:
        """Keyword arguments for ``Profile.kd_config`` / ``train_settings`` (empty = the profile's)."""
        wanted = {"epochs": (self.epochs, int), "lr": (self.lr, float)}
        return {name: cast(value) for name, (value, cast) in wanted.items() if value is not None}

    def describe(self) -> str:
        epochs = "the profile's" if self.epochs is None else str(self.epochs)
        lr = "the profile's" if self.lr is None else f"{self.lr:g}"
        return (
            f"{self.dataset} (set beside the paper's {self.paper_dataset}), seeds {list(self.seeds)}, "
            f"tau grid {[float(t) for t in self.tau_grid]}, student epochs {epochs}, student lr {lr}"
        )


# The settings a caller may override (``dataset`` through the ``datasets`` knob of the notebooks).
SETTING_NAMES = tuple(sorted(f.name for f in dataclasses.fields(NotebookSettings) if f.name != "notebook"))


def _raw_settings(profile_name: str, notebook: str) -> Dict[str, Any]:
    if notebook not in NOTEBOOKS:
        raise ValueError(f"unknown notebook {notebook!r}; valid: {', '.join(NOTEBOOKS)}")
    section, _ = load_section(profile_name, {}, (), "setting", family="extra_tables")
    return dict(section.get(notebook) or {})


def profile_overrides(profile_name: str, notebook: str) -> Dict[str, Any]:
    """Profile knobs (e.g. ``train_subset``) that ``notebook`` changes at ``profile_name``; usually none."""
    overrides = dict(_raw_settings(profile_name, notebook).get("profile_overrides") or {})
    unknown = sorted(set(overrides) - set(overridable_knobs()))
    if unknown:
        raise ValueError(f"unknown profile knob(s) {', '.join(unknown)} in {notebook}'s profile_overrides; "
                         f"valid: {', '.join(overridable_knobs())}")
    return overrides


def load_settings(profile: Profile, notebook: str, **overrides) -> NotebookSettings:
    """The settings of ``notebook`` at ``profile``, with ``overrides`` (None values are skipped).

    Unknown notebooks or knobs raise a ValueError naming the valid choices.
    """
    raw = _raw_settings(profile.name, notebook)
    raw.pop("profile_overrides", None)  # applied to the profile itself (greenkd_utils.settings.notebooks)
    unknown = sorted(set(raw) - set(SETTING_NAMES)) + sorted(set(overrides) - set(SETTING_NAMES))
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(unknown)} for {notebook}; valid: {', '.join(SETTING_NAMES)}")
    raw.update({k: v for k, v in overrides.items() if v is not None})
    if not raw.get("paper_dataset"):
        raise ValueError(f"configs/extra_tables.yaml [{profile.name}][{notebook}] names no paper_dataset "
                         "(the data set of the paper's column ours is set beside)")

    dataset = raw.get("dataset") or profile.datasets[0]
    seeds = tuple(int(s) for s in (raw.get("seeds") or profile.seeds))
    tau_grid = tuple(float(t) for t in (raw.get("tau_grid") or profile.tau_grid))
    batch_sizes = tuple(int(b) for b in (raw.get("batch_sizes") or profile.batch_sizes))
    epochs = raw.get("epochs")
    lr = raw.get("lr")
    if lr is not None and not float(lr) > 0:
        raise ValueError(f"lr must be > 0 or None (the profile's); got {lr}")
    if not seeds:
        raise ValueError(f"{notebook} needs at least one seed")
    if not tau_grid:
        raise ValueError(f"{notebook} needs a tau grid with at least one value")
    if epochs is not None and int(epochs) < 1:
        raise ValueError(f"epochs must be >= 1 or None (the profile's); got {epochs}")
    return NotebookSettings(
        notebook=notebook,
        dataset=str(dataset),
        paper_dataset=str(raw["paper_dataset"]),
        seeds=seeds,
        tau_grid=tau_grid,
        epochs=None if epochs is None else int(epochs),
        lr=None if lr is None else float(lr),
        batch_sizes=batch_sizes,
        qat_backend=str(raw.get("qat_backend") or "auto"),
        qat_init=str(raw.get("qat_init") or "student"),
        qat_epochs=None if raw.get("qat_epochs") is None else int(raw["qat_epochs"]),
        qat_lr=None if raw.get("qat_lr") is None else float(raw["qat_lr"]),
        qat_freeze_fraction=float(raw.get("qat_freeze_fraction") or 1.0),
    )

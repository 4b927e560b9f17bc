"""Per-profile settings of the notebooks for Tables 7 and 8 and Figure 3, and their paper comparison.

These notebooks train architectures (ShuffleNetV2, ResNet18 and MobileNetV2
students) that cost far more per step on a CPU than the demo profile's
WRN-16-1 student, so each notebook has its own epochs, seeds, tau grid and
data set per profile in ``configs/extra_tables.yaml`` (top-level keys
``smoke``, ``demo``, ``paper``; a ``null`` value means "the profile's").
A notebook's ``parameters`` cell may override any of them.

In the demo and paper profiles teachers are never changed by these settings:
they come from the profile as they are, so a ResNet18 teacher trained for
Table 1 is the one Tables 7 and 8 distil from (same config, same run-store
key). Only the smoke profile shrinks its data and teacher epochs further for
Tables 7 and 8 (``profile_overrides``), to keep the test-suite fast.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Tuple

import pandas as pd

from greenkd_utils.paper import reference
from greenkd_utils.settings import knobs
from greenkd_utils.settings.loader import load_section
from greenkd_utils.settings.profiles import (
    Profile,
    overridable_knobs,
)

log = logging.getLogger(__name__)

NOTEBOOKS = ("table7_teacher_student_pairs", "table8_quantization", "figure3_temperature_and_batch")


@dataclass(frozen=True)
class NotebookSettings:
    """What one of these notebooks trains, resolved against its profile (no ``None`` left but ``epochs``).

    ``epochs`` and ``lr`` of None keep the profile's student settings, so KD runs are the very
    runs Tables 1 and 4 train (cache hits); ``paper_dataset`` is the paper column ours is set
    beside. The ``qat_*`` fields are Table 8's: where QAT starts (``student``: the trained float
    student, ``scratch``), its epochs and lr (None: the student's), and when it freezes observers
    and batch-norm statistics (``quantization.QATConfig``).
    """

    notebook: str
    dataset: str
    paper_dataset: str
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
        changes: Dict[str, Any] = {}
        if self.epochs is not None:
            changes["epochs"] = int(self.epochs)
        if self.lr is not None:
            changes["lr"] = float(self.lr)
        return changes

    def describe(self) -> str:
        epochs = "the profile's" if self.epochs is None else str(self.epochs)
        lr = "the profile's" if self.lr is None else f"{self.lr:g}"
        return (
            f"{self.dataset} (set beside the paper's {self.paper_dataset}), seeds {list(self.seeds)}, "
            f"tau grid {[float(t) for t in self.tau_grid]}, student epochs {epochs}, student lr {lr}"
        )



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


def setup(profile: str, notebook: str, *, results_dir=None, data_root=None, device=None, progress: bool = True,
          teacher_epochs: Optional[int] = None, pue: Optional[float] = None,
          carbon_intensity_g_per_kwh: Optional[float] = None, datasets: Optional[Sequence[str]] = None,
          train_subset: Optional[int] = None, test_subset: Optional[int] = None,
          temperature_mode: Optional[str] = None, logit_standardization: Optional[bool] = None,
          **settings_overrides):
    """``experiments.setup`` with the notebook's profile overrides, and the notebook's settings.

    Returns ``(experiment, settings)``. Parameters left at None keep the profile's (or the
    notebook's) values. These notebooks show one dataset: the first of ``datasets``.
    ``train_subset`` and ``test_subset`` change the profile (and so its teachers' run keys);
    ``settings_overrides`` go to :func:`load_settings`. Every value is parsed by
    :mod:`greenkd_utils.settings.knobs` before anything is built.
    """
    from greenkd_utils.paper.experiments import setup as experiment_setup

    values = knobs.coerce({
        "profile": profile, "results_dir": results_dir, "data_root": data_root, "device": device,
        "teacher_epochs": teacher_epochs, "pue": pue, "carbon_intensity_g_per_kwh": carbon_intensity_g_per_kwh,
        "datasets": datasets, "train_subset": train_subset, "test_subset": test_subset,
        "temperature_mode": temperature_mode, "logit_standardization": logit_standardization, **settings_overrides,
    })
    place = {k: values.pop(k) for k in ("profile", "results_dir", "data_root", "device")}
    profile_knobs = profile_overrides(place["profile"], notebook)
    for knob in ("teacher_epochs", "pue", "carbon_intensity_g_per_kwh", "train_subset", "test_subset",
                 "temperature_mode", "logit_standardization"):
        if values.get(knob) is not None:
            profile_knobs[knob] = values[knob]
        values.pop(knob)
    datasets = values.pop("datasets")
    if datasets:
        values["dataset"] = datasets[0]
        if len(datasets) > 1:
            log.info("%s shows one dataset: %s (of %s)", notebook, datasets[0], ", ".join(datasets))
    exp = experiment_setup(place["profile"], results_dir=place["results_dir"], data_root=place["data_root"],
                           device=place["device"], progress=progress, **profile_knobs)
    return exp, load_settings(exp.profile, notebook, **values)


def load_settings(profile: Profile, notebook: str, **overrides) -> NotebookSettings:
    """The settings of ``notebook`` at ``profile``, with ``overrides`` (None values are skipped).

    Unknown notebooks or knobs raise a ValueError naming the valid choices.
    """
    raw = _raw_settings(profile.name, notebook)
    raw.pop("profile_overrides", None)  # applied by setup() to the profile itself
    valid = sorted(f.name for f in dataclasses.fields(NotebookSettings) if f.name != "notebook")
    unknown = sorted(set(raw) - set(valid)) + sorted(set(overrides) - set(valid))
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(unknown)} for {notebook}; valid: {', '.join(valid)}")
    raw.update({k: v for k, v in overrides.items() if v is not None})

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
        paper_dataset=str(raw.get("paper_dataset") or reference.PAPER_DATASET_FOR.get(dataset, dataset)),
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


def compare_with_paper_dataset(
    ours: pd.DataFrame,
    table: str,
    metrics: Mapping[str, str],
    paper_dataset: str,
    keys: Iterable[str] = ("method",),
    extra_match: Iterable[str] = (),
) -> pd.DataFrame:
    """:func:`reference.compare_with_paper` against the paper's ``paper_dataset`` column.

    Tables 7 (Tiny ImageNet) and 8 (CIFAR-10) each have one paper data set, which is not
    the one ``PAPER_DATASET_FOR`` maps the demo's digits to; the ``dataset`` column keeps ours.
    """
    if ours.empty:
        return pd.DataFrame()
    renamed = ours.assign(our_dataset=ours["dataset"], dataset=paper_dataset)
    out = reference.compare_with_paper(
        renamed, table, metrics, keys=("our_dataset",) + tuple(keys), extra_match=tuple(extra_match)
    )
    return out.rename(columns={"our_dataset": "dataset"})

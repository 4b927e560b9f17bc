"""Table 4's detection column as functions: what ``notebooks/table4_detection.ipynb`` calls.

``setup(profile, ...)`` binds the detection settings of a profile
(``configs/detection.yaml``) to the run store, device and energy constants of
the classification experiments (:func:`greenkd_utils.paper.experiments.setup`), so
every notebook of a profile writes to one store and reports CO2 with the same
PUE and carbon intensity. ``table4_detection(exp)`` trains (or loads) the
teacher once, then per KD loss a tuned sweep and a stochastic run per seed,
and returns one row per cell with the mAP as mean and std over seeds and the
energy, CO2 and FLOPs per seed.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import pandas as pd

from greenkd_utils.core.config import TemperatureSpec
from greenkd_utils.core.detection.config import (
    DetectionRunConfig,
    DetectionTrainSettings,
)
from greenkd_utils.core.detection.models import AnchorSettings
from greenkd_utils.core.detection.shapes import ShapesSettings
from greenkd_utils.energy.report import DEFAULT_CARBON_INTENSITY, DEFAULT_PUE
from greenkd_utils.paper import experiments as ex
from greenkd_utils.paper import plotting
from greenkd_utils.runs.record import RunResult
from greenkd_utils.runs.sweep import TunedResult, grid_configs, tuned_sweep
from greenkd_utils.runs.tasks.detection import train_detection_run
from greenkd_utils.settings import knobs
from greenkd_utils.settings.loader import SCHEDULE_KNOBS, apply_overrides, load_section
from greenkd_utils.settings.profiles import single_run_temperature

log = logging.getLogger(__name__)

# Knobs a notebook may override (None leaves the profile's value); epochs and lr are the students'.
_OVERRIDES = ("seeds", "epochs", "teacher_epochs", "lr", "tau_grid", "losses", "image_size", "teacher_seed", "num_workers",
              "temperature_mode", "logit_standardization")


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
    # The energy constants of the classification profile of the same name (set by setup()).
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
        return {
            "dataset": self.dataset,
            "image_size": self.image_size,
            "anchors": self.anchors,
            "shapes": self.shapes,
            "profile": self.name,
            "val_fraction": self.val_fraction,
        }

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
    """The named profile's detection settings with ``overrides`` applied (None values are skipped)."""
    raw, overrides = load_section(name, overrides, _OVERRIDES, "detection parameter", family="detection")
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
        tau_range=tuple(float(v) for v in raw["tau_range"]),
        alpha=float(raw["alpha"]),
        kl_reduction=raw["kl_reduction"],
        val_fraction=float(raw["val_fraction"]),
        num_workers=int(raw["num_workers"]),
        teacher_train=raw["teacher_train"],
        student_train=raw["student_train"],
        temperature_mode=knobs.parse("temperature_mode", raw.get("temperature_mode", "stochastic")),
        logit_standardization=knobs.parse("logit_standardization", raw.get("logit_standardization", False)),
    )


@dataclass
class DetectionExperiment(ex.BoundProfile):
    """The detection profile bound to a run store, a device and the energy constants of the classification
    profile of the same name."""

    def run(self, config: DetectionRunConfig) -> RunResult:
        return train_detection_run(config, self.store, self.device, self.data_root, self.progress, self.profile.num_workers)

    def teacher(self) -> RunResult:
        return self.run(self.profile.teacher_config())

    def stochastic(self, seed: int, loss: str = "hkd") -> RunResult:
        return self.run(self.profile.kd_config(seed, loss))

    def fixed(self, seed: int, loss: str, tau: float) -> RunResult:
        return self.run(self.profile.kd_config(seed, loss, TemperatureSpec.fixed(tau)))

    def tuned(self, seed: int, loss: str = "hkd", taus: Optional[Sequence[float]] = None) -> TunedResult:
        base_config = self.profile.kd_config(seed, loss, TemperatureSpec.fixed(1.0))
        return tuned_sweep(base_config, taus or self.profile.tau_grid, self.store, self.device, self.data_root,
                           self.progress, num_workers=self.profile.num_workers)


def setup(
    profile: str = "demo",
    results_dir=None,
    data_root=None,
    device: Optional[str] = None,
    pue: Optional[float] = None,
    carbon_intensity_g_per_kwh: Optional[float] = None,
    progress: bool = True,
    **overrides,
) -> DetectionExperiment:
    """The detection experiment of ``profile``; ``overrides``: seeds, epochs, teacher_epochs, lr, tau_grid,
    losses, image_size, teacher_seed, num_workers (None keeps the profile's value, unknown names raise).

    Every value is parsed by :mod:`greenkd_utils.settings.knobs` first (``seeds="[0, 1]"`` works, a bad value
    fails here, naming the knob); the old name ``carbon_intensity`` still works, with a FutureWarning.
    """
    values = knobs.coerce({
        "profile": profile, "results_dir": results_dir, "data_root": data_root, "device": device, "pue": pue,
        "carbon_intensity_g_per_kwh": carbon_intensity_g_per_kwh, **overrides,
    })
    shared = {k: values.pop(k) for k in ("profile", "results_dir", "data_root", "device", "pue", "carbon_intensity_g_per_kwh")}
    detection = load_detection_profile(shared["profile"], **values)
    base = ex.setup(progress=progress, **shared)
    detection = dataclasses.replace(detection, pue=base.pue, carbon_intensity_g_per_kwh=base.carbon_intensity)
    return DetectionExperiment(detection, base.store, base.device, base.data_root, base.progress)


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------
_MAP_COLUMNS = {"accuracy_pct": "map_pct", "accuracy_pct_std": "map_pct_std"}


def table4_detection(exp: DetectionExperiment, losses: Optional[Iterable[str]] = None) -> pd.DataFrame:
    """The teacher (trained once), then per KD loss the tuned sweep and the stochastic run (per seed).

    mAP (VOC07 11-point, IoU 0.5, in percent) is the mean and std over seeds; GFLOPs (M), kWh and CO2
    are per seed (mean over seeds), the tuned rows summing the whole tau grid.
    """
    p = exp.profile
    rows = [ex.summarise(exp, [exp.teacher()], dataset=p.dataset, loss="ssd", method="teacher", model=p.teacher_model)]
    for loss in losses or p.losses:
        for method in ("kd_tuned", "kd_stochastic"):
            results = [exp.tuned(s, loss) if method == "kd_tuned" else exp.stochastic(s, loss) for s in p.seeds]
            rows.append(ex.summarise(exp, results, dataset=p.dataset, loss=loss, method=method, model=p.student_model))
    return pd.DataFrame(rows).rename(columns=_MAP_COLUMNS)


def needed_runs(exp: DetectionExperiment, plan, losses: Optional[Iterable[str]] = None) -> None:
    """Add the runs of :func:`table4_detection` (the examples figure reads one of them) to ``plan``."""
    p = exp.profile
    options = {"num_workers": p.num_workers}
    plan.add(p.teacher_config(), "table4_detection", **options)
    for loss in losses or p.losses:
        for seed in p.seeds:
            base = p.kd_config(seed, loss, TemperatureSpec.fixed(1.0))
            plan.add_all(grid_configs(base, p.tau_grid), "table4_detection", **options)
            plan.add(p.kd_config(seed, loss), "table4_detection", **options)
    plan.add(p.kd_config(p.seeds[0], "hkd"), "table4_detection", **options)  # the examples figure's student


def energy_ratio(table: pd.DataFrame) -> pd.DataFrame:
    """Per loss: tuned over stochastic energy and FLOPs, and the mAP difference (stochastic - tuned)."""
    kd = table[table["method"] != "teacher"].rename(columns={v: k for k, v in _MAP_COLUMNS.items()})
    ratios = ex.energy_ratio(kd, by=("dataset", "loss"))
    return ratios.rename(columns={"accuracy_difference_pct": "map_difference_pct"})


PAPER_METRICS = {
    "map_pct": "map_pct",
    "training_gflops_millions": "training_gflops_millions",
    "energy_kwh_pue": "energy_kwh",  # the paper's kWh include its PUE
    "co2_g": "co2_g",
}


def compare_with_paper(table: pd.DataFrame) -> pd.DataFrame:
    """Our KD rows beside Table 4's PASCAL VOC column (the paper has no teacher row)."""
    from greenkd_utils.paper.reference import compare_with_paper as compare

    kd = table[table["method"] != "teacher"]
    return compare(kd, "table4", PAPER_METRICS, keys=("dataset", "method"), extra_match=("loss",))


def plot_table(table: pd.DataFrame, title: str):
    """CO2 per seed (log scale) and mAP (mean +- std over seeds) per loss, tuned vs stochastic."""
    kd = table[table["method"] != "teacher"].rename(columns={v: k for k, v in _MAP_COLUMNS.items()})
    fig = plotting.plot_cost_and_accuracy(kd, "loss", title)
    fig.axes[1].set_ylabel("test mAP (%, VOC07 11-point, IoU 0.5)")
    lowest = (kd["accuracy_pct"] - kd["accuracy_pct_std"].fillna(0)).min()
    fig.axes[1].set_ylim(max(0.0, lowest - 10), 100)
    fig.axes[1].legend(fontsize=8, loc="upper right")  # the bars fill the lower part of the mAP panel
    return fig


def plot_detections(exp: DetectionExperiment, result: RunResult, count: int = 6, score_threshold: float = 0.3):
    """A row of test images with the run's detections (score >= ``score_threshold``) and the ground truth."""
    import matplotlib.pyplot as plt

    from greenkd_utils.core.detection.evaluation import predict
    from greenkd_utils.runs.tasks.detection import prepare_detection_data

    plotting.use_style()
    data = prepare_detection_data(result.config, exp.data_root)
    model = result.load_model(exp.store, "cpu")
    shown = _images_covering_every_class(data.test, count)
    test = data.test.subset(shown)
    predictions = predict(model, test.images, data.mean, data.std)
    fig, axes = plt.subplots(1, len(shown), figsize=(2.2 * len(shown), 2.6), squeeze=False)
    names = test.class_names
    for ax, image, pred, boxes in zip(axes[0], test.images, predictions, test.boxes):
        size = image.shape[-1]
        # extent: pixel i covers [i, i + 1), the convention of the boxes.
        ax.imshow(image.permute(1, 2, 0).numpy(), extent=(0, size, size, 0))
        for box in boxes:
            x1, y1, x2, y2 = box.tolist()
            ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec="white", lw=1, ls="--"))
        keep = pred["scores"] >= score_threshold
        for box, label, score in zip(pred["boxes"][keep], pred["labels"][keep], pred["scores"][keep]):
            x1, y1, x2, y2 = box.tolist()
            ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec="#1b9e77", lw=1.5))
            ax.text(x1, y1, f"{names[int(label) - 1]} {float(score):.2f}", color="#1b9e77", fontsize=6, va="bottom")
        ax.set_axis_off()
        ax.grid(False)
    fig.suptitle(f"{result.config.name}: detections (green) and ground truth (dashed)", fontsize=9)
    fig.tight_layout()
    return fig


def _images_covering_every_class(dataset, count: int) -> List[int]:
    """The first images that together show every class, topped up with the next ones to ``count``."""
    chosen, missing = [], set(range(1, dataset.num_classes + 1))
    for i, labels in enumerate(dataset.labels):
        if len(chosen) < count and missing & set(labels.tolist()):
            chosen.append(i)
            missing -= set(labels.tolist())
    rest = [i for i in range(len(dataset)) if i not in chosen]
    return sorted(chosen + rest[: max(0, count - len(chosen))])


def describe_profile(exp: DetectionExperiment) -> Dict[str, Any]:
    """What the profile trains, in a few fields (for the notebook's header)."""
    p = exp.profile
    return {
        "dataset": p.dataset,
        "image_size": p.image_size,
        "teacher": f"{p.teacher_model} (width x{p.teacher_width:g})",
        "student": f"{p.student_model} (width x{p.student_width:g})",
        "seeds": list(p.seeds),
        "tau_grid": list(p.tau_grid),
        "tau_range": list(p.tau_range),
        "losses": list(p.losses),
        "teacher_epochs": p.teacher_train["epochs"],
        "student_epochs": p.student_train["epochs"],
    }

"""Table 4's detection column as functions: what ``notebooks/table4_detection.ipynb`` calls.

The notebook's experiment is a :class:`~greenkd_utils.paper.experiments.DetectionExperiment`
(``experiments.setup(profile, notebook="table4_detection", ...)``): the detection settings of a profile
(``configs/detection.yaml``, read by :mod:`greenkd_utils.settings.detection`) bound to the run store, device
and energy constants of the classification profile of the same name, so every notebook of a profile writes
to one store and reports CO2 with the same PUE and carbon intensity. ``table4_detection(exp)`` trains (or
loads) the teacher once, then per KD loss a tuned sweep and a stochastic run per seed, and returns one row
per cell with the mAP as mean and std over seeds and the energy, CO2 and FLOPs per seed.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Iterable, List, Optional

import matplotlib.pyplot as plt
import pandas as pd

from greenkd_utils.analysis import plotting
from greenkd_utils.core.config import TemperatureSpec
from greenkd_utils.core.detection.evaluation import predict
from greenkd_utils.paper import experiments as ex
from greenkd_utils.paper.experiments import DetectionExperiment
from greenkd_utils.paper.reference import compare_with_paper as compare_with_reference, headline_metrics
from greenkd_utils.runs.record import RunResult
from greenkd_utils.runs.sweep import grid_configs
from greenkd_utils.runs.tasks.detection import prepare_detection_data

log = logging.getLogger(__name__)


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


PAPER_METRICS = headline_metrics("map_pct")


def compare_with_paper(table: pd.DataFrame) -> pd.DataFrame:
    """Our KD rows beside Table 4's PASCAL VOC column (the paper has no teacher row)."""
    kd = table[table["method"] != "teacher"]
    return compare_with_reference(kd, "table4", PAPER_METRICS, keys=("dataset", "method"), extra_match=("loss",))


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

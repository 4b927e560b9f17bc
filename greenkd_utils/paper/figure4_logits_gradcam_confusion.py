"""Figure 4: what the teacher and the students output for one test image (softmax and logits, linear and log
scale), where they look (Grad-CAM, :mod:`greenkd_utils.analysis.gradcam`) and how they confuse classes
(:func:`greenkd_utils.analysis.metrics.plot_confusion_matrices`)."""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import pandas as pd

from greenkd_utils.analysis import plotting
from greenkd_utils.analysis.predictions import Predictions


def first_index_of_class(labels: np.ndarray, class_index: int) -> int:
    """Index of the first test image whose label is ``class_index``."""
    hits = np.flatnonzero(np.asarray(labels) == class_index)
    if hits.size == 0:
        present = sorted(set(np.asarray(labels).tolist()))
        raise ValueError(f"no test image of class {class_index}; classes present: {present}")
    return int(hits[0])


def output_distributions(predictions: Dict[str, Predictions], index: int) -> pd.DataFrame:
    """Long table of each model's softmax output for test image ``index``: method, class, probability."""
    rows = []
    for method, p in predictions.items():
        probs = p.probabilities[index]
        for k, prob in enumerate(probs):
            rows.append(
                {
                    "method": method,
                    "image_index": index,
                    "true_class": p.class_names[p.labels[index]],
                    "class_index": k,
                    "class_name": p.class_names[k],
                    "probability": float(prob),
                    "logit": float(p.logits[index, k]),
                    "is_prediction": bool(k == p.predicted[index]),
                }
            )
    return pd.DataFrame(rows)


def plot_output_distributions(table, title: str = "Output distribution (softmax) for one test image"):
    """Grouped bars, one group per class and one bar per model (Figure 4a).

    Left: linear scale (the top class). Right: log scale, where the small probabilities a student
    learns from its teacher (the "dark knowledge") become visible.
    """
    import matplotlib.pyplot as plt

    plotting.use_style()
    methods = list(dict.fromkeys(table["method"]))
    classes = list(dict.fromkeys(table["class_name"]))
    fig, axes = plt.subplots(1, 2, figsize=(max(9.0, 0.8 * len(classes) + 4), 3.4))
    width = 0.8 / max(len(methods), 1)
    x = np.arange(len(classes))
    floor = max(float(table["probability"].min()), 1e-12)  # log bars need a positive base
    for ax, log in zip(axes, (False, True)):
        for i, method in enumerate(methods):
            rows = table[table["method"] == method].set_index("class_name").loc[classes]
            heights = rows["probability"] - (floor / 2 if log else 0)
            ax.bar(x + (i - (len(methods) - 1) / 2) * width, heights, width, bottom=floor / 2 if log else 0,
                   color=plotting.method_color(method), label=plotting.method_label(method))
        ax.set_xticks(x, classes, rotation=0 if len(classes) <= 12 else 90)
        ax.set_xlabel(f"class (true class: {table['true_class'].iloc[0]})")
        if log:
            ax.set_yscale("log")
            ax.set_ylabel("softmax probability (log scale)")
        else:
            ax.set_ylim(0, 1.02)
            ax.set_ylabel("softmax probability")
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def needed_runs(exp, plan, loss: str = "hkd", seed: Optional[int] = None) -> None:
    """Add the runs the notebook reads (teacher, tuned and stochastic students of one seed) to ``plan``."""
    seed = exp.profile.seeds[0] if seed is None else seed
    for method in ("teacher", "kd_tuned", "kd_stochastic"):
        plan.add_all(exp.method_configs(method, exp.profile.datasets[0], seed, loss), "figure4_logits_gradcam_confusion")

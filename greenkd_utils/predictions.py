"""The test-set predictions of finished runs: what Table 5 and Figure 4 are computed from.

The runs are the ones Table 1 trains (teacher, tuned KD, stochastic KD), taken
from the run store; nothing is trained here that Table 1 would not train too.
For the tuned baseline the model is the grid run chosen on validation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd
import torch

from .engine import RunResult, predict_logits, prepare_data, resolve_device

log = logging.getLogger(__name__)

COMPARED_METHODS = ("teacher", "student", "kd_tuned", "kd_stochastic")
"""The methods a comparison may ask for, in the order the paper's tables show them."""


@dataclass
class Predictions:
    """Logits of one model on the test split, with the true labels."""

    method: str
    seed: int
    model_name: str
    logits: np.ndarray  # (N, K) float32
    labels: np.ndarray  # (N,) int64
    class_names: List[str]

    @property
    def predicted(self) -> np.ndarray:
        return self.logits.argmax(axis=1)

    @property
    def probabilities(self) -> np.ndarray:
        """Softmax of the logits (tau = 1: the model's own output distribution)."""
        return torch.softmax(torch.from_numpy(self.logits), dim=1).numpy()

    @property
    def accuracy_pct(self) -> float:
        return float((self.predicted == self.labels).mean() * 100.0)


def method_runs(exp, dataset: str, seed: int, methods: Sequence[str] = ("teacher", "kd_tuned", "kd_stochastic"),
                loss: str = "hkd") -> Dict[str, RunResult]:
    """The finished run behind each method (cached, or trained as Table 1 would train it).

    ``kd_tuned`` is the grid run whose tau was chosen on the validation split.
    """
    unknown = [m for m in methods if m not in COMPARED_METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; valid: {', '.join(COMPARED_METHODS)}")
    runs: Dict[str, RunResult] = {}
    for method in methods:
        if method == "teacher":
            runs[method] = exp.teacher(dataset, seed)
        elif method == "student":
            runs[method] = exp.student(dataset, seed)
        elif method == "kd_tuned":
            runs[method] = exp.tuned(dataset, seed, loss).chosen
        else:
            runs[method] = exp.stochastic(dataset, seed, loss)
    return runs


def load_models(exp, runs: Dict[str, RunResult], device: Optional[str] = None) -> Dict[str, torch.nn.Module]:
    """The trained networks of ``runs`` in eval mode on ``device`` (default: the experiment's)."""
    target = resolve_device(device or exp.device)
    return {method: run.load_model(exp.store, target) for method, run in runs.items()}


def test_split(exp, run: RunResult, device: Optional[str] = None):
    """(uint8 images, labels, mean, std, class names) of the test split ``run`` was evaluated on."""
    data = prepare_data(run.config, resolve_device(device or exp.device), exp.data_root)
    images, labels = data.test
    return images, labels, data.mean, data.std, data.class_names


def predictions_of(exp, runs: Dict[str, RunResult], device: Optional[str] = None) -> Dict[str, Predictions]:
    """Test-set logits of every run (all runs of one profile share the test split)."""
    target = resolve_device(device or exp.device)
    models = load_models(exp, runs, str(target))
    out: Dict[str, Predictions] = {}
    for method, run in runs.items():
        images, labels, mean, std, class_names = test_split(exp, run, str(target))
        logits = predict_logits(models[method], images, mean, std)
        out[method] = Predictions(
            method=method,
            seed=run.config.seed,
            model_name=run.config.model,
            logits=logits.float().cpu().numpy(),
            labels=labels.cpu().numpy(),
            class_names=list(class_names),
        )
    return out


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

    from . import plotting

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

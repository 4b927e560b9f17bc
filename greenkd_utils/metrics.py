"""Table 5's classification metrics, computed with scikit-learn, with the averaging written down.

The paper lists accuracy, precision, recall, specificity, Cohen's kappa,
prevalence and F1 without saying how the per-class values were averaged.
Here every per-class metric is the **macro average** over classes (each class
counts the same); specificity and prevalence are **one-vs-rest** per class:

- specificity_k = TN_k / (TN_k + FP_k), where class k is "positive" and every
  other class "negative";
- prevalence_k = (TP_k + FN_k) / N, the share of test images whose true class is k.

Two consequences worth knowing when reading the paper's Table 5: the macro
mean of the one-vs-rest prevalence is exactly 1/K for any test set, and on a
test set with equally many images per class, macro specificity is a function
of accuracy alone: 1 - (1 - accuracy) / (K - 1).  :func:`balanced_specificity`
and :func:`balanced_kappa` give these closed forms.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Dict, Iterable, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    multilabel_confusion_matrix,
    precision_recall_fscore_support,
)

if TYPE_CHECKING:
    from .predictions import Predictions

log = logging.getLogger(__name__)

METRICS = ("accuracy_pct", "precision", "recall", "specificity", "kappa", "prevalence", "f1")
"""Table 5's columns, in the paper's order (accuracy in percent, the others in [0, 1] or, for kappa, <= 1)."""

AVERAGING_NOTE = (
    "precision, recall, F1: macro average over classes (sklearn precision_recall_fscore_support, average='macro'); "
    "specificity TN/(TN+FP) and prevalence (TP+FN)/N: one-vs-rest per class (sklearn multilabel_confusion_matrix), "
    "then the macro average; kappa: Cohen's kappa over all classes (sklearn cohen_kappa_score, unweighted); "
    "accuracy: share of correct test predictions in percent"
)


def per_class_metrics(
    y_true: Sequence[int], y_pred: Sequence[int], labels: Optional[Sequence[int]] = None
) -> pd.DataFrame:
    """One row per class: precision, recall, F1, specificity, prevalence, support (one-vs-rest counts)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    labels = _labels(y_true, y_pred, labels)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=0
    )
    # multilabel_confusion_matrix gives, per class, [[TN, FP], [FN, TP]] of the one-vs-rest problem.
    mcm = multilabel_confusion_matrix(y_true, y_pred, labels=labels)
    tn, fp, fn, tp = mcm[:, 0, 0], mcm[:, 0, 1], mcm[:, 1, 0], mcm[:, 1, 1]
    negatives = tn + fp
    specificity = np.divide(tn, negatives, out=np.zeros(len(labels)), where=negatives > 0)
    return pd.DataFrame(
        {
            "class_index": labels,
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "specificity": specificity,
            "prevalence": (tp + fn) / max(len(y_true), 1),
            "support": support,
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "tn": tn,
        }
    )


def classification_metrics(
    y_true: Sequence[int], y_pred: Sequence[int], labels: Optional[Sequence[int]] = None
) -> Dict[str, float]:
    """Table 5's seven metrics for one model (see the module docstring for the averaging).

    ``labels`` fixes the class list (e.g. ``range(10)``) so that a class never
    predicted and absent from a small test slice still counts in the macro
    average; by default it is every class seen in ``y_true`` or ``y_pred``.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 1 or y_true.size == 0:
        raise ValueError(
            "y_true and y_pred must be non-empty 1-d arrays of one length; "
            f"got {y_true.shape} and {y_pred.shape}"
        )
    labels = _labels(y_true, y_pred, labels)
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average="macro", zero_division=0
    )
    per_class = per_class_metrics(y_true, y_pred, labels)
    return {
        "accuracy_pct": float(accuracy_score(y_true, y_pred) * 100.0),
        "precision": float(precision),
        "recall": float(recall),
        "specificity": float(per_class["specificity"].mean()),
        "kappa": float(cohen_kappa_score(y_true, y_pred, labels=labels)),
        "prevalence": float(per_class["prevalence"].mean()),
        "f1": float(f1),
    }


def _labels(y_true: np.ndarray, y_pred: np.ndarray, labels: Optional[Sequence[int]]) -> np.ndarray:
    if labels is None:
        return np.unique(np.concatenate([y_true, y_pred]))
    return np.asarray(list(labels))


def balanced_specificity(accuracy: float, num_classes: int) -> float:
    """Macro one-vs-rest specificity on a test set with equally many images per class.

    Each error is one false positive of exactly one class, and every class has
    N (K-1)/K negatives, so the mean false-positive rate is (1 - accuracy) / (K - 1).
    ``accuracy`` is a fraction in [0, 1].
    """
    _check_fraction(accuracy, num_classes)
    return 1.0 - (1.0 - accuracy) / (num_classes - 1)


def balanced_kappa(accuracy: float, num_classes: int) -> float:
    """Cohen's kappa on a test set with equally many images per class.

    Chance agreement is sum_k p_true(k) p_pred(k) = (1/K) sum_k p_pred(k) = 1/K
    whatever the predictions, so kappa = (accuracy - 1/K) / (1 - 1/K).
    """
    _check_fraction(accuracy, num_classes)
    chance = 1.0 / num_classes
    return (accuracy - chance) / (1.0 - chance)


def _check_fraction(accuracy: float, num_classes: int) -> None:
    if not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"accuracy must be a fraction in [0, 1]; got {accuracy}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2; got {num_classes}")


def metrics_table(predictions_by_seed: Iterable[Mapping[str, Predictions]], dataset: str) -> pd.DataFrame:
    """Table 5: one row per method, each metric as the mean over seeds with ``<metric>_std`` beside it.

    ``predictions_by_seed`` holds, for each seed, ``{method: Predictions}``.
    """
    per_seed = []
    for by_method in predictions_by_seed:
        for method, p in by_method.items():
            labels = range(len(p.class_names))
            row = {"method": method, "seed": p.seed, "model": p.model_name}
            row.update(classification_metrics(p.labels, p.predicted, labels=labels))
            per_seed.append(row)
    if not per_seed:
        raise ValueError("metrics_table needs the predictions of at least one seed")
    long = pd.DataFrame(per_seed)
    rows = []
    for method, group in long.groupby("method", sort=False):
        row = {"dataset": dataset, "method": method, "model": group["model"].iloc[0], "n_seeds": len(group)}
        for metric in METRICS:
            row[metric] = float(group[metric].mean())
            row[f"{metric}_std"] = float(group[metric].std(ddof=1)) if len(group) > 1 else 0.0
        rows.append(row)
    return pd.DataFrame(rows)


def confusion_matrices(
    predictions: Mapping[str, Predictions], normalize: Optional[str] = None
) -> Dict[str, np.ndarray]:
    """sklearn confusion matrices (rows: true class, columns: predicted), one per method.

    ``normalize``: None (counts), "true" (each row sums to 1), "pred" or "all", as in scikit-learn.
    """
    valid = (None, "true", "pred", "all")
    if normalize not in valid:
        raise ValueError(f"normalize must be one of {valid}; got {normalize!r}")
    return {
        method: confusion_matrix(p.labels, p.predicted, labels=range(len(p.class_names)), normalize=normalize)
        for method, p in predictions.items()
    }


def confusion_long(predictions: Mapping[str, Predictions]) -> pd.DataFrame:
    """The confusion matrices as a long table (method, true, predicted, count) for a CSV."""
    rows = []
    for method, matrix in confusion_matrices(predictions).items():
        names = predictions[method].class_names
        for i, j in np.ndindex(matrix.shape):
            rows.append(
                {"method": method, "true_class": names[i], "predicted_class": names[j], "count": int(matrix[i, j])}
            )
    return pd.DataFrame(rows)


def plot_confusion_matrices(predictions: Mapping[str, Predictions], title: str = "Confusion matrices (test set)"):
    """One heat map per method (rows: true class, columns: predicted), counts written in the cells (Figure 4c)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    from . import plotting

    plotting.use_style()
    matrices = confusion_matrices(predictions)
    n = len(matrices)
    num_classes = next(iter(matrices.values())).shape[0]
    annotate = num_classes <= 20  # beyond that the numbers are unreadable
    side = 3.2 if num_classes <= 12 else 5.0
    fig, axes = plt.subplots(1, n, figsize=(side * n + 0.5, side), squeeze=False)
    vmax = max(m.max() for m in matrices.values())
    for ax, (method, matrix) in zip(axes[0], matrices.items()):
        names = predictions[method].class_names
        sns.heatmap(matrix, ax=ax, cmap="Blues", vmin=0, vmax=vmax, annot=annotate, fmt="d",
                    annot_kws={"fontsize": 6}, cbar=False, square=True,
                    xticklabels=names if annotate else False, yticklabels=names if annotate else False)
        accuracy = np.trace(matrix) / max(matrix.sum(), 1) * 100
        ax.set_title(f"{plotting.method_label(method)}\naccuracy {accuracy:.1f}%", fontsize=9)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def paper_consistency(num_classes: int = 10) -> pd.DataFrame:
    """What one-vs-rest definitions give for the paper's Table 5 accuracies, beside the printed values.

    The paper's test set (CIFAR-10) has equally many images per class, so
    specificity, kappa and prevalence follow from accuracy alone
    (:func:`balanced_specificity`, :func:`balanced_kappa`, 1/K). Table 1's
    accuracy for the same method is listed too: the two tables disagree.
    """
    from .reference import load_reference

    ref = load_reference("table5")
    table1 = load_reference("table1")
    rows = []
    for method in dict.fromkeys(ref["method"]):
        cells = ref[ref["method"] == method].set_index("metric")["value"]
        dataset = ref.loc[ref["method"] == method, "dataset"].iloc[0]
        same_cell = (table1["dataset"] == dataset) & (table1["method"] == method)
        t1 = table1[same_cell & (table1["metric"] == "accuracy_pct")]
        accuracy = float(cells["accuracy_pct"]) / 100.0
        rows.append(
            {
                "method": method,
                "paper_dataset": dataset,
                "table5_accuracy_pct": float(cells["accuracy_pct"]),
                "table1_accuracy_pct": float(t1["value"].iloc[0]) if len(t1) else np.nan,
                "paper_specificity": float(cells["specificity"]),
                "one_vs_rest_specificity": balanced_specificity(accuracy, num_classes),
                "paper_kappa": float(cells["kappa"]),
                "kappa_from_accuracy": balanced_kappa(accuracy, num_classes),
                "paper_prevalence": float(cells["prevalence"]),
                "one_vs_rest_prevalence": 1.0 / num_classes,
                "paper_precision": float(cells["precision"]),
                "paper_recall": float(cells["recall"]),
            }
        )
    return pd.DataFrame(rows)


def plot_metrics_vs_paper(table: pd.DataFrame, comparison: Optional[pd.DataFrame] = None,
                          title: str = "Table 5: metrics of teacher and students"):
    """Bars: our metrics in [0, 1] per method (mean +- std over seeds); black marks: the paper's values."""
    import matplotlib.pyplot as plt

    from . import plotting

    plotting.use_style()
    shown = [m for m in METRICS if m != "accuracy_pct"]
    methods = list(table["method"])
    fig, ax = plt.subplots(figsize=(10, 3.8))
    width = 0.8 / max(len(methods), 1)
    x = np.arange(len(shown))
    for i, method in enumerate(methods):
        row = table[table["method"] == method].iloc[0]
        offset = x + (i - (len(methods) - 1) / 2) * width
        ax.bar(offset, [row[m] for m in shown], width, yerr=[row[f"{m}_std"] for m in shown], capsize=2,
               color=plotting.method_color(method), label=plotting.method_label(method))
        if comparison is not None:
            paper = comparison[comparison["method"] == method].set_index("metric")["paper"]
            ax.scatter(offset, [paper.get(m, np.nan) for m in shown], marker="_", s=250, color="black", zorder=3,
                       label="paper (CIFAR-10)" if i == 0 else None)
    ax.set_xticks(x, shown)
    lowest = min(0.0, float(table["kappa"].min()) - 0.05)  # kappa can be negative
    ax.set_ylim(lowest, 1.05)
    ax.set_ylabel("macro average (one-vs-rest where needed)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(title)
    fig.tight_layout()
    return fig

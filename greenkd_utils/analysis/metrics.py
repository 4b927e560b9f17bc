"""Classification metrics computed with scikit-learn (Table 5's and the confusion matrices of Figure 4),
with the averaging written down.

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
from typing import Dict, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    multilabel_confusion_matrix,
    precision_recall_fscore_support,
)

from greenkd_utils.analysis import plotting
from greenkd_utils.analysis.predictions import Predictions

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

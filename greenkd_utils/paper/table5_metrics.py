"""Table 5: accuracy, precision, recall, specificity, kappa, prevalence and F1 of the teacher and the
students (macro averages, one-vs-rest where needed; :mod:`greenkd_utils.analysis.metrics` says how), and what
those definitions imply for the paper's printed values."""

from __future__ import annotations

from typing import Iterable, Mapping, Optional

import numpy as np
import pandas as pd

from greenkd_utils.analysis import plotting
from greenkd_utils.analysis.metrics import (
    METRICS,
    balanced_kappa,
    balanced_specificity,
    classification_metrics,
)
from greenkd_utils.analysis.predictions import Predictions
from greenkd_utils.paper.reference import load_reference


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


def paper_consistency(num_classes: int = 10) -> pd.DataFrame:
    """What one-vs-rest definitions give for the paper's Table 5 accuracies, beside the printed values.

    The paper's test set (CIFAR-10) has equally many images per class, so
    specificity, kappa and prevalence follow from accuracy alone
    (:func:`balanced_specificity`, :func:`balanced_kappa`, 1/K). Table 1's
    accuracy for the same method is listed too: the two tables disagree.
    """
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


def needed_runs(exp, plan, loss: str = "hkd") -> None:
    """Add the runs whose predictions the table scores (every seed, first data set) to ``plan``."""
    for seed in exp.profile.seeds:
        for method in ("teacher", "kd_tuned", "kd_stochastic"):
            plan.add_all(exp.method_configs(method, exp.profile.datasets[0], seed, loss), "table5_metrics")

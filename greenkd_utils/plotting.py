"""One look for every figure, and one way to save it (PNG for the README, PDF for papers)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, List

import matplotlib.pyplot as plt
import seaborn as sns

# One colour per method, kept across every figure so a reader learns them once.
METHOD_COLORS = {
    "teacher": "#4d4d4d",
    "student": "#8c8c8c",
    "kd_tuned": "#d95f02",
    "kd_stochastic": "#1b9e77",
    "qat": "#7570b3",
}
METHOD_LABELS = {
    "teacher": "Teacher (CE)",
    "student": "Student (CE)",
    "kd_tuned": "KD, tuned tau (grid)",
    "kd_stochastic": "KD, stochastic tau (ours)",
    "qat": "Quantization-aware training",
}


def use_style() -> None:
    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind")
    plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 150, "savefig.bbox": "tight", "axes.titleweight": "bold"})


def save_figure(fig, path_without_suffix: str | Path) -> List[Path]:
    """Save ``fig`` as PNG and PDF next to each other; returns both paths."""
    base = Path(path_without_suffix)
    base.parent.mkdir(parents=True, exist_ok=True)
    paths = [base.with_suffix(".png"), base.with_suffix(".pdf")]
    for path in paths:
        fig.savefig(path)
    return paths


def method_color(method: str) -> str:
    return METHOD_COLORS.get(method, "#1f78b4")


def method_label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def label_all(methods: Iterable[str]) -> List[str]:
    return [method_label(m) for m in methods]


def plot_cost_and_accuracy(table, group: str, title: str, methods: Iterable[str] | None = None):
    """Two panels per table: CO2eq per seed (log scale) and test accuracy (mean +- std over seeds).

    ``group`` is the column whose values become the x-axis groups (e.g. "dataset" or "loss").
    """
    import numpy as np

    use_style()
    methods = list(methods or dict.fromkeys(table["method"]))
    groups = list(dict.fromkeys(table[group]))
    fig, (ax_co2, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / max(len(methods), 1)
    x = np.arange(len(groups))
    for i, method in enumerate(methods):
        rows = [table[(table[group] == g) & (table["method"] == method)] for g in groups]
        co2 = [r["co2_g"].iloc[0] if len(r) else np.nan for r in rows]
        acc = [r["accuracy_pct"].iloc[0] if len(r) else np.nan for r in rows]
        std = [r["accuracy_pct_std"].iloc[0] if len(r) else np.nan for r in rows]
        offset = x + (i - (len(methods) - 1) / 2) * width
        ax_co2.bar(offset, co2, width, color=method_color(method), label=method_label(method))
        ax_acc.bar(offset, acc, width, yerr=std, capsize=3, color=method_color(method), label=method_label(method))
    source = "/".join(sorted(set("/".join(table["energy_source"]).split("/"))))
    ax_co2.set_yscale("log")
    ax_co2.set_ylabel(f"CO$_2$eq per seed (g, {source})")
    ax_acc.set_ylabel("test accuracy (%)")
    lowest = np.nanmin(table["accuracy_pct"] - table["accuracy_pct_std"].fillna(0))
    ax_acc.set_ylim(max(0.0, lowest - 5), 100)
    for ax in (ax_co2, ax_acc):
        ax.set_xticks(x, groups)
    ax_acc.legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    return fig

"""One look for every figure, and one way to save it (PNG for the README, PDF for papers)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, List

import matplotlib.pyplot as plt
import numpy as np
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
    "kd_stochastic": "KD, stochastic tau (the paper's)",
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


def energy_sources(table) -> List[str]:
    """The energy sources behind a table's rows, each once (a row over several runs joins its sources with '/')."""
    return sorted(set("/".join(table["energy_source"]).split("/")))


def plot_cost_and_accuracy(table, group: str, title: str, methods: Iterable[str] | None = None):
    """Two panels per table: CO2eq per seed (log scale) and test accuracy (mean +- std over seeds).

    ``group`` is the column whose values become the x-axis groups (e.g. "dataset" or "loss").
    """
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
    source = "/".join(energy_sources(table))
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


def plot_tau_and_batch_size(tau_table, batch_table, title: str):
    """Figure 3: (a) test accuracy per fixed tau, the tuned result (tau chosen on validation) as a dashed
    line and the stochastic run as a band (mean +- std over seeds); (b) stochastic-tau accuracy per batch
    size. Both x-axes are log2 when the values span 8x or more."""
    use_style()
    fig, (ax_tau, ax_batch) = plt.subplots(1, 2, figsize=(11, 4))
    fixed = tau_table[tau_table["temperature"] == "fixed"].sort_values("tau")
    stochastic = tau_table[tau_table["temperature"] == "stochastic"]
    tuned_color, stochastic_color = method_color("kd_tuned"), method_color("kd_stochastic")
    ax_tau.errorbar(fixed["tau"], fixed["accuracy_pct"], yerr=fixed["accuracy_pct_std"], marker="o", capsize=3,
                    color=tuned_color, label="KD, fixed tau (one grid run each)")
    chosen = fixed[fixed["chosen_on_validation_by_n_seeds"] > 0]
    ax_tau.scatter(chosen["tau"], chosen["accuracy_pct"], s=140, facecolors="none", edgecolors=tuned_color,
                   linewidths=1.5, zorder=3, label="chosen on validation (by >= 1 seed)")
    if len(stochastic):
        mean, std = float(stochastic["accuracy_pct"].iloc[0]), float(stochastic["accuracy_pct_std"].iloc[0])
        ax_tau.axhspan(mean - std, mean + std, color=stochastic_color, alpha=0.2, lw=0)
        ax_tau.axhline(mean, color=stochastic_color, label=f"{method_label('kd_stochastic')}: {stochastic['tau_label'].iloc[0]}")
    tuned = tau_table[tau_table["temperature"] == "tuned"]
    if len(tuned):
        ax_tau.axhline(float(tuned["accuracy_pct"].iloc[0]), color=tuned_color, ls="--",
                       label=f"{method_label('kd_tuned')}: tau chosen on validation")
    ax_tau.set_xlabel("fixed temperature tau")
    ax_tau.set_ylabel("test accuracy (%)")
    ax_tau.set_title("(a) accuracy against tau")
    ax_tau.legend(fontsize=8, loc="lower right")

    batch = batch_table.sort_values("batch_size")
    ax_batch.errorbar(batch["batch_size"], batch["accuracy_pct"], yerr=batch["accuracy_pct_std"], marker="o",
                      capsize=3, color=stochastic_color, label=method_label("kd_stochastic"))
    ax_batch.set_xlabel("batch size")
    ax_batch.set_ylabel("test accuracy (%)")
    ax_batch.set_title("(b) stochastic tau against batch size")
    ax_batch.legend(fontsize=8, loc="lower right")

    for ax, values in ((ax_tau, fixed["tau"]), (ax_batch, batch["batch_size"])):
        values = np.asarray(values, dtype=float)
        if len(values) and values.min() > 0 and values.max() / values.min() >= 8:
            ax.set_xscale("log", base=2)
        ax.set_xticks(values, [f"{v:g}" for v in values])
        ax.minorticks_off()
    lows = np.concatenate([(t["accuracy_pct"] - t["accuracy_pct_std"].fillna(0)).to_numpy() for t in (tau_table, batch_table)])
    for ax in (ax_tau, ax_batch):
        ax.set_ylim(max(0.0, float(np.nanmin(lows)) - 5), 100)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def add_verdict(fig, sentence: str) -> None:
    """Print the stochastic-vs-tuned verdict under a figure, so the picture carries the answer with it."""
    fig.text(0.5, -0.02, sentence, ha="center", va="top", fontsize=9, wrap=True)


def figure_and_axes(axes=None, ncols: int = 2, figsize=(9, 3.4)):
    """``(fig, axes)``: a new row of ``ncols`` axes in the kit's style, or the figure of the ``axes`` given."""
    use_style()
    if axes is None:
        return plt.subplots(1, ncols, figsize=figsize)
    return axes[0].figure, axes

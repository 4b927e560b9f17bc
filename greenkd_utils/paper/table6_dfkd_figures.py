"""Figures of the data-free KD notebook: what the synthesizers made, and where the energy went."""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from greenkd_utils.analysis.plotting import energy_sources, method_color, use_style

PHASE_COLORS = {"synthesis": "#7570b3", "student": "#1b9e77"}


def plot_samples(samples: Dict[str, Dict[str, torch.Tensor]], class_names: Optional[Sequence[str]] = None, per_method: int = 20):
    """One row of synthesized images per synthesizer, each titled with the class it was made for.

    ``samples`` maps a label (e.g. "cmi") to ``{"images": uint8 (N, C, H, W), "targets": (N,)}``.
    """
    use_style()
    rows = len(samples)
    cols = max(1, min(per_method, min(len(s["targets"]) for s in samples.values())))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.8, rows * 1.05 + 0.4), squeeze=False)
    for r, (label, sample) in enumerate(samples.items()):
        # One image per class first, so a row shows the whole label set where it can.
        targets = sample["targets"].tolist()
        order = sorted(range(len(targets)), key=lambda i: (targets[:i].count(targets[i]), targets[i]))[:cols]
        for c, i in enumerate(order):
            ax = axes[r][c]
            image = sample["images"][i].float().div(255.0)
            if image.shape[0] == 1:
                ax.imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(image.permute(1, 2, 0).numpy())
            name = class_names[targets[i]] if class_names else str(targets[i])
            ax.set_title(name, fontsize=7, pad=2)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
        for c in range(len(order), cols):
            axes[r][c].axis("off")
        axes[r][0].set_ylabel(label, fontsize=8, rotation=0, ha="right", va="center")
    fig.suptitle("Synthesized images (the student's only training data), titled with their target class", fontsize=9)
    fig.tight_layout()
    return fig


def plot_phase_split(table: pd.DataFrame, title: str = "Where the energy of data-free KD goes"):
    """Stacked bars per (synthesizer, tuned|stochastic): energy with PUE of synthesis and of the student
    (linear scale, so the stacked parts keep their proportions; the synthesis share is written on each
    bar), next to the accuracy (mean +- std over seeds)."""
    use_style()
    short = {"kd_tuned": "tuned tau", "kd_stochastic": "stochastic tau"}
    labels = [f"{r.dfkd_method}\n{short.get(r.method, r.method)}" for r in table.itertuples()]
    x = np.arange(len(table))
    fig, (ax_energy, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    synthesis = table["energy_synthesis_kwh_pue"].to_numpy()
    student = table["energy_student_kwh_pue"].to_numpy()
    ax_energy.bar(x, synthesis, color=PHASE_COLORS["synthesis"], label="synthesis")
    ax_energy.bar(x, student, bottom=synthesis, color=PHASE_COLORS["student"], label="student (KD)")
    for xi, syn, stu in zip(x, synthesis, student):
        if syn + stu > 0:
            ax_energy.annotate(f"{100 * syn / (syn + stu):.0f}% synthesis", (xi, syn + stu), ha="center", va="bottom", fontsize=7)
    source = "/".join(energy_sources(table))
    ax_energy.set_ylabel(f"kWh with PUE per seed ({source})")
    ax_energy.legend(fontsize=8, loc="upper right")
    colors = [method_color(m) for m in table["method"]]
    ax_acc.bar(x, table["accuracy_pct"], yerr=table["accuracy_pct_std"], capsize=3, color=colors)
    teacher = table["teacher_accuracy_pct"].mean()
    ax_acc.axhline(teacher, color=method_color("teacher"), linestyle="--", linewidth=1, label=f"teacher ({teacher:.1f}%)")
    ax_acc.set_ylabel("student accuracy on the real test set (%)")
    ax_acc.set_ylim(0, 100)
    ax_acc.legend(fontsize=8, loc="lower right")
    for ax in (ax_energy, ax_acc):
        ax.set_xticks(x, labels, fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_tau_grid(grid: pd.DataFrame, title: str = "Validation accuracy per fixed tau, and the stochastic run"):
    """Validation accuracy of every fixed-tau run (the tuned baseline's grid) per synthesizer, with the
    stochastic run as a horizontal line; the chosen tau is circled."""
    use_style()
    methods = list(dict.fromkeys(grid["dfkd_method"]))
    fig, axes = plt.subplots(1, len(methods), figsize=(5 * len(methods), 3.6), squeeze=False)
    for ax, method in zip(axes[0], methods):
        part = grid[grid["dfkd_method"] == method]
        fixed = part[part["temperature"] == "fixed"].groupby("tau")["val_accuracy_pct"].agg(["mean", "std"]).reset_index()
        ax.errorbar(fixed["tau"], fixed["mean"], yerr=fixed["std"].fillna(0), marker="o",
                    color=method_color("kd_tuned"), label="fixed tau (validation)")
        chosen = part[part["chosen_on_validation"]]
        ax.scatter(chosen["tau"], chosen["val_accuracy_pct"], s=160, facecolors="none",
                   edgecolors="black", label="chosen on validation")
        stochastic = part[part["temperature"] == "stochastic"]["val_accuracy_pct"]
        if len(stochastic):
            ax.axhline(stochastic.mean(), color=method_color("kd_stochastic"), label="stochastic tau (validation)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("tau")
        ax.set_ylabel("validation accuracy (%)")
        ax.set_title(method)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig

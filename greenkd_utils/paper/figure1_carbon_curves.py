"""Training curves of cost and accuracy per epoch (Figure 1a), from the runs' stored history.

Every finished run keeps, per epoch, its cumulative device energy
(``history[i]["energy_kwh"]``) and its test accuracy. A curve turns the energy
into CO2eq with the experiment's constants (kWh x PUE x carbon intensity).
The tuned baseline is drawn as its whole grid laid end to end: run after run,
the energy keeps adding up, because finding the best tau costs every run.
The teacher's training is its own curve; as in Table 1, it is not added to
the KD curves. The inference cost of Figure 1 (b, c) is measured by
:mod:`greenkd_utils.analysis.inference`; :func:`compare_inference_with_paper`
sets the teacher's beside the paper's.
"""

from __future__ import annotations

import logging
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np
import pandas as pd

from greenkd_utils.analysis import plotting
from greenkd_utils.analysis.inference import plot_inference_costs
from greenkd_utils.paper.reference import load_reference, paper_value
from greenkd_utils.runs.record import RunResult

log = logging.getLogger(__name__)

CURVE_METHODS = ("teacher", "student", "kd_tuned", "kd_stochastic")


def curve_from_history(
    history: Sequence[Dict],
    pue: float,
    carbon_intensity_g_per_kwh: float,
    energy_offset_kwh: float = 0.0,
    epoch_offset: int = 0,
) -> pd.DataFrame:
    """Per-epoch cumulative energy and CO2eq of one run, shifted to start after ``energy_offset_kwh``.

    ``history`` is a run's per-epoch record with ``epoch``, ``energy_kwh`` (cumulative device kWh)
    and ``test_accuracy``; the offsets lay runs end to end.
    """
    if not history:
        raise ValueError("a run's history is empty: it has no finished epoch")
    frame = pd.DataFrame(
        {
            "epoch_in_run": [int(h["epoch"]) for h in history],
            "run_energy_kwh": [float(h["energy_kwh"]) for h in history],
            "test_accuracy": [float(h["test_accuracy"]) for h in history],
            "val_accuracy": [float(h.get("val_accuracy", np.nan)) for h in history],
            "energy_source": [str(h.get("energy_source", "")) for h in history],
        }
    )
    frame["epoch"] = frame["epoch_in_run"] + epoch_offset
    frame["energy_kwh"] = frame["run_energy_kwh"] + energy_offset_kwh
    frame["energy_kwh_pue"] = frame["energy_kwh"] * pue
    frame["co2_g"] = frame["energy_kwh_pue"] * carbon_intensity_g_per_kwh
    return frame


def _tau_label(run: RunResult) -> str:
    mode = run.tau.get("mode")
    if mode == "fixed":
        return f"{run.tau['tau']:g}"
    if mode == "stochastic":
        return f"U[{run.tau['low']:g}, {run.tau['high']:g}] per batch"
    return ""


def method_curve(method: str, runs: Iterable[RunResult], pue: float, carbon_intensity_g_per_kwh: float) -> pd.DataFrame:
    """The curve of one method: its runs (one, or a whole tau grid) laid end to end."""
    parts: List[pd.DataFrame] = []
    energy, epochs = 0.0, 0
    for segment, run in enumerate(runs):
        part = curve_from_history(run.history, pue, carbon_intensity_g_per_kwh, energy, epochs)
        part.insert(0, "method", method)
        part.insert(1, "segment", segment)
        part.insert(2, "run", run.name)
        part.insert(3, "tau", _tau_label(run))
        part.insert(4, "seed", run.config.seed)
        parts.append(part)
        energy = float(part["energy_kwh"].iloc[-1])
        epochs = int(part["epoch"].iloc[-1])
    if not parts:
        raise ValueError(f"no runs for method {method!r}")
    return pd.concat(parts, ignore_index=True)


def training_curves(exp, dataset: str, seed: int, loss: str = "hkd",
                    methods: Sequence[str] = CURVE_METHODS) -> pd.DataFrame:
    """Figure 1a's data: per-epoch cumulative energy, CO2eq and test accuracy of each method (one seed).

    The runs are Table 1's (cached, or trained as Table 1 would train them).
    """
    unknown = [m for m in methods if m not in CURVE_METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; valid: {', '.join(CURVE_METHODS)}")
    curves = []
    for method in methods:
        if method == "teacher":
            runs = [exp.teacher(dataset, seed)]
        elif method == "student":
            runs = [exp.student(dataset, seed)]
        elif method == "kd_tuned":
            runs = exp.tuned(dataset, seed, loss).runs
        else:
            runs = [exp.stochastic(dataset, seed, loss)]
        curves.append(method_curve(method, runs, exp.pue, exp.carbon_intensity))
    table = pd.concat(curves, ignore_index=True)
    table.insert(0, "dataset", dataset)
    return table


def curve_totals(curves: pd.DataFrame) -> pd.DataFrame:
    """One row per method: epochs run, final cumulative energy and CO2eq, and the test accuracy.

    For a grid the accuracy is that of the run with the best final validation accuracy (the first
    on ties), the rule of :func:`greenkd_utils.runs.sweep.choose_on_validation`, so it matches Table 1.
    """
    rows = []
    for method, group in curves.groupby("method", sort=False):
        last = group.iloc[-1]
        finals = group.groupby("segment", sort=True).tail(1)
        chosen = finals.iloc[int(np.argmax(finals["val_accuracy"].to_numpy()))]
        rows.append(
            {
                "method": method,
                "runs": int(group["segment"].nunique()),
                "epochs": int(last["epoch"]),
                "energy_kwh": float(last["energy_kwh"]),
                "energy_kwh_pue": float(last["energy_kwh_pue"]),
                "co2_g": float(last["co2_g"]),
                "test_accuracy": float(chosen["test_accuracy"]),
                "chosen_tau": chosen["tau"],
                "energy_source": "/".join(sorted(set(group["energy_source"]) - {""})),
            }
        )
    return pd.DataFrame(rows)


def _line_style(method: str) -> str:
    # The paper draws the costly tuned KD dashed and the proposed stochastic run solid.
    return {"kd_tuned": "--", "teacher": ":"}.get(method, "-")


def plot_training_curves(curves: pd.DataFrame, axes=None):
    """Cumulative CO2eq (log scale) and test accuracy against epoch, one line per method (Figure 1a)."""
    fig, axes = plotting.figure_and_axes(axes, 2, figsize=(11, 3.6))
    ax_co2, ax_acc = axes
    for method, group in curves.groupby("method", sort=False):
        style = dict(color=plotting.method_color(method), linestyle=_line_style(method), linewidth=1.8)
        ax_co2.plot(group["epoch"], group["co2_g"], label=plotting.method_label(method), **style)
        # Each grid run starts again from scratch: its accuracy is drawn as its own piece.
        for i, (_, segment) in enumerate(group.groupby("segment")):
            label = plotting.method_label(method) if i == 0 else None
            ax_acc.plot(segment["epoch"], segment["test_accuracy"], label=label, **style)
    source = "/".join(sorted(set(curves["energy_source"]) - {""})) or "estimated"
    ax_co2.set_yscale("log")
    ax_co2.set_xlabel("epoch (tuned KD: the grid's runs one after the other)")
    ax_co2.set_ylabel(f"cumulative CO$_2$eq (g, {source})")
    ax_co2.set_title("(a) training: cumulative CO$_2$eq")
    ax_acc.set_xlabel("epoch (tuned KD: the grid's runs one after the other)")
    ax_acc.set_ylabel("test accuracy (%)")
    ax_acc.set_title("(a) training: test accuracy")
    ax_co2.legend(fontsize=8)
    return fig


def plot_figure1(curves: pd.DataFrame, inference: pd.DataFrame, title: Optional[str] = None):
    """Figure 1: (a) training CO2eq and accuracy per epoch, (b) inference time, (c) inference CO2eq."""
    import matplotlib.pyplot as plt

    plotting.use_style()
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    plot_training_curves(curves, axes=axes[0])
    plot_inference_costs(inference, axes=axes[1])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def compare_inference_with_paper(costs: pd.DataFrame, paper_test_images: int = 10_000) -> pd.DataFrame:
    """Our teacher's inference time and CO2eq per test-set pass beside the paper's Figure 1 (b, c).

    The paper gives only its teacher's numbers (ResNet18 on CIFAR-100's evaluation set, RTX 3070 Ti).
    Test sets differ in size, so per-image values are listed too, assuming the paper's evaluation
    set is CIFAR-100's ``paper_test_images`` test images.
    """
    teacher = costs[costs["method"] == "teacher"]
    if teacher.empty:
        raise ValueError("the inference table has no 'teacher' row to compare with the paper")
    row = teacher.iloc[0]
    ref = load_reference("figure1")
    paper_dataset = ref["dataset"].iloc[0] if len(ref) else "cifar100"
    out = []
    pairs = (("time_per_pass_s", "inference_time_s", "s"), ("co2_g_per_pass", "inference_co2_g", "g"))
    for ours_col, metric, unit in pairs:
        paper, _ = paper_value("figure1", paper_dataset, "teacher_inference", metric)
        ours = float(row[ours_col])
        out.append(
            {
                "method": "teacher",
                "model": row["model"],
                "metric": metric,
                "unit": unit,
                "ours_per_pass": ours,
                "paper_per_pass": paper,
                "ratio_per_pass": ours / paper if paper else np.nan,
                "ours_per_image": ours / row["n_images"],
                "paper_per_image": paper / paper_test_images,
                "ratio_per_image": (ours / row["n_images"]) / (paper / paper_test_images) if paper else np.nan,
                "ours_test_images": int(row["n_images"]),
                "paper_dataset": paper_dataset,
                "energy_source": row["energy_source"],
                "device": row["device"],
            }
        )
    return pd.DataFrame(out)


def needed_runs(exp, plan, loss: str = "hkd", seed: Optional[int] = None) -> None:
    """Add the runs the notebook draws (one seed of the first data set, every method) to ``plan``."""
    seed = exp.profile.seeds[0] if seed is None else seed
    for method in CURVE_METHODS:
        plan.add_all(exp.method_configs(method, exp.profile.datasets[0], seed, loss), "figure1_carbon_curves")

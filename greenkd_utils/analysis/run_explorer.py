"""What a run store holds, and one run at a time: its curves, its taus, its energy by phase, its provenance.

:func:`runs_table` lists every finished run of a store (any store, of any profile, empty included) with the
columns a person filters on; :func:`filter_runs` keeps the rows that match the chosen values. For one run,
:func:`run_figure` draws its training curves, the taus it drew and its energy by phase (each phase marked
"estimated" where it was), and :func:`provenance` says what produced it: library versions, CPU or GPU,
threads and executor. ``notebooks/explore_runs.ipynb`` wires dropdowns to these functions.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import pandas as pd

from greenkd_utils.analysis.plotting import method_color, use_style
from greenkd_utils.energy.phases import PHASES
from greenkd_utils.energy.report import EnergyReport
from greenkd_utils.runs.execution import hardware_label
from greenkd_utils.runs.record import RunResult

# The dropdowns' columns, in the order a notebook shows them.
FILTERS = ("profile", "dataset", "loss", "method", "seed")
ALL = "(all)"
COLUMNS = ("profile", "dataset", "task", "loss", "method", "tau", "seed", "model", "accuracy_pct", "energy_kwh",
           "energy_source", "co2_g", "hardware", "executor", "name", "key")


def run_method(config: Dict[str, Any], task: str) -> str:
    """How a run's config reads in the tables: ``teacher``, ``student``, ``kd_fixed``, ``kd_stochastic`` (or
    ``kd_<temperature mode>``), ``qat``; a data-free run by its synthesis method."""
    if task == "qat":
        return "qat"
    role = config.get("role")
    if role in ("teacher", "student"):
        return role
    if task == "data_free_kd":
        return f"data_free_{(config.get('synthesis') or {}).get('method', 'kd')}"
    mode = (config.get("temperature") or {}).get("mode")
    return f"kd_{mode}" if mode else "kd"


def tau_label(tau: Dict[str, Any]) -> str:
    """The temperature a run used, in a few words (empty for a run without one)."""
    mode = tau.get("mode")
    if not mode:
        return ""
    if mode == "fixed":
        value = tau.get("tau", tau.get("mean"))
        return f"fixed {value:g}" if isinstance(value, (int, float)) else "fixed"
    if "low" in tau and "high" in tau:
        return f"{mode} U[{tau['low']:g}, {tau['high']:g}]"
    return str(mode)


# Re-derives a run's CO2 under a notebook's PUE and carbon intensity (``Experiment.energy``).
Reprice = Callable[[EnergyReport], EnergyReport]


def _row(run: RunResult, reprice: Optional[Reprice]) -> Dict[str, Any]:
    config = run.config.to_dict()
    energy = reprice(run.energy) if reprice else run.energy
    return {
        "profile": config.get("profile", ""),
        "dataset": config.get("dataset", ""),
        "task": run.task,
        "loss": config.get("loss") or "",
        "method": run_method(config, run.task),
        "tau": tau_label(run.tau),
        "seed": int(config.get("seed", 0)),
        "model": config.get("model", ""),
        "accuracy_pct": float(run.test_accuracy),
        "energy_kwh": float(energy.energy_kwh),
        "energy_source": energy.source,
        "co2_g": float(energy.co2_g),
        "hardware": hardware_label(run.hardware),
        "executor": (run.extras.get("execution") or {}).get("executor", "unrecorded"),
        "name": run.name,
        "key": run.key,
    }


def finished_runs(store) -> Dict[str, RunResult]:
    """Every sound finished run of ``store``, by key."""
    runs = {}
    for record in store.finished_records():
        run = RunResult.from_dict(record, store.runs_dir / f"{record['name']}-{record['key']}")
        runs[run.key] = run
    return runs


def runs_table(store, runs: Optional[Dict[str, RunResult]] = None, reprice: Optional[Reprice] = None) -> pd.DataFrame:
    """One row per finished run (:data:`COLUMNS`), sorted by profile, dataset, method, loss, tau, seed, name;
    an empty table with the same columns for an empty store. ``reprice`` (e.g. ``exp.energy``) sets the PUE
    and carbon intensity of the CO2 column; None keeps each record's own."""
    runs = finished_runs(store) if runs is None else runs
    table = pd.DataFrame([_row(run, reprice) for run in runs.values()], columns=list(COLUMNS))
    if table.empty:
        return table
    table = table.sort_values(["profile", "dataset", "method", "loss", "tau", "seed", "name"], kind="stable")
    return table.reset_index(drop=True)


def filter_choices(table: pd.DataFrame) -> Dict[str, List[Any]]:
    """Per filter column, the choices a dropdown offers: :data:`ALL`, then each value the table holds."""
    return {column: [ALL, *sorted(table[column].unique().tolist())] for column in FILTERS}


def filter_runs(table: pd.DataFrame, **chosen: Any) -> pd.DataFrame:
    """The rows whose value in each named column is the chosen one (:data:`ALL` or None: any value)."""
    unknown = sorted(set(chosen) - set(FILTERS))
    if unknown:
        raise ValueError(f"cannot filter runs by {', '.join(unknown)}; valid: {', '.join(FILTERS)}")
    keep = np.ones(len(table), dtype=bool)
    for column, value in chosen.items():
        if value is None or value == ALL:
            continue
        if value not in set(table[column]):
            choices = ", ".join(str(v) for v in filter_choices(table)[column])
            raise ValueError(f"no run has {column} {value!r}; valid: {choices}")
        keep &= (table[column] == value).to_numpy()
    return table[keep].reset_index(drop=True)


def seeds_of_setting(table: pd.DataFrame, key: str) -> int:
    """How many seeds the store holds of the run ``key``'s setting (same everything but the seed)."""
    row = _find(table, key)
    same = np.ones(len(table), dtype=bool)
    for column in ("profile", "dataset", "task", "loss", "method", "tau", "model"):
        same &= (table[column] == row[column]).to_numpy()
    return int(table.loc[same, "seed"].nunique())


def _find(table: pd.DataFrame, key: str) -> pd.Series:
    found = table[table["key"] == key]
    if found.empty:
        raise ValueError(f"no run with key {key!r} in this store; valid: {', '.join(table['key']) or 'none'}")
    return found.iloc[0]


def run_caption(table: pd.DataFrame, key: str) -> str:
    """One line naming the run, its profile and how many seeds of its setting the store holds."""
    row = _find(table, key)
    seeds = seeds_of_setting(table, key)
    what = " ".join(str(v) for v in (row["method"], row["loss"] if row["loss"] not in ("", "ce") else "",
                                     row["tau"]) if v)
    return (f"profile {row['profile']}: {row['name']} ({what}; seed {row['seed']}, "
            f"{seeds} seed{'s' if seeds != 1 else ''} of this setting in the store)")


def provenance(run: RunResult) -> pd.DataFrame:
    """What produced the run, as (field, value) rows: library versions, device, CPU or GPU, threads,
    executor, how its energy was obtained, when it finished."""
    hardware = run.hardware or {}
    execution = run.extras.get("execution") or {}
    rows = [(f"version: {name}", version) for name, version in sorted(run.versions.items())]
    rows += [
        ("device", run.device),
        ("CPU", hardware.get("cpu_model", "unrecorded")),
        ("CPU kernels (instruction set)", hardware.get("cpu_capability", "unrecorded")),
        ("torch threads", hardware.get("torch_threads", "unrecorded")),
        ("logical cores", hardware.get("logical_cores", "unrecorded")),
        ("GPU", hardware.get("gpu", "none")),
    ]
    if hardware.get("gpu"):
        rows += [("GPU driver", hardware.get("gpu_driver", "unrecorded")),
                 ("CUDA", hardware.get("cuda_version", "unrecorded"))]
    rows += [
        ("executor", execution.get("executor", "unrecorded")),
        ("host", execution.get("host", "unrecorded")),
        ("runs sharing the node", execution.get("runs_sharing_node", "unrecorded")),
        ("energy", f"{run.energy.source}: " + "; ".join(
            f"{c.name} {c.source} ({c.method})" for c in run.energy.components.values())),
        ("finished at", run.finished_at),
    ]
    return pd.DataFrame(rows, columns=["field", "value"]).astype({"value": str})


def _plot_curves(ax, run: RunResult) -> None:
    history = pd.DataFrame(run.history)
    if history.empty or "epoch" not in history:
        ax.text(0.5, 0.5, "no per-epoch history recorded", ha="center", va="center", transform=ax.transAxes)
        return
    for column, style in (("train_accuracy", ":"), ("val_accuracy", "--"), ("test_accuracy", "-")):
        if column in history:
            ax.plot(history["epoch"], history[column], style, marker="o", markersize=3,
                    label=column.replace("_", " "))
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    ax.legend(fontsize=7)
    if "train_loss" in history:
        twin = ax.twinx()
        twin.plot(history["epoch"], history["train_loss"], color="#8c8c8c", lw=1)
        twin.set_ylabel("training loss (grey)")
        twin.grid(False)


def _plot_tau(ax, run: RunResult, color: str) -> None:
    tau = run.tau or {}
    if "histogram_counts" in tau and "histogram_edges" in tau:
        ax.stairs(tau["histogram_counts"], tau["histogram_edges"], fill=True, color=color)
        ax.set_title(f"{tau.get('count', sum(tau['histogram_counts']))} batches: {tau_label(tau)}")
        ax.set_xlabel("tau")
        ax.set_ylabel("batches")
    elif tau.get("mode") == "fixed":
        ax.axvline(float(tau.get("tau", tau.get("mean", 0.0))), color=color, lw=3)
        ax.set_title(tau_label(tau) + " (every batch)")
        ax.set_xlabel("tau")
        ax.set_yticks([])
    else:
        ax.text(0.5, 0.5, "no temperature:\ntrained on labels only" if not tau.get("mode") else tau_label(tau),
                ha="center", va="center", transform=ax.transAxes)
        ax.set_title("tau")
        ax.set_xticks([])
        ax.set_yticks([])


def _plot_energy(ax, run: RunResult) -> None:
    phases = [p for p in PHASES if p in run.energy_by_phase] + sorted(set(run.energy_by_phase) - set(PHASES))
    if not phases:
        ax.bar(["total"], [run.energy.energy_kwh], color="#4d4d4d")
        ax.set_title(f"energy: {run.energy.source} (no phases recorded)")
    else:
        reports = [run.energy_by_phase[p] for p in phases]
        labels = [p + ("\n(estimated)" if r.source != "measured" else "") for p, r in zip(phases, reports)]
        ax.bar(labels, [r.energy_kwh for r in reports], color="#4d4d4d")
        ax.set_title(f"energy by phase: {run.energy.source}")
        ax.tick_params(axis="x", labelsize=7)
    ax.set_ylabel("device energy (kWh)")


def run_figure(run: RunResult, caption: str = ""):
    """Three panels for one run: its training curves, the taus it drew, its energy by phase."""
    import matplotlib.pyplot as plt

    use_style()
    color = method_color("kd_stochastic" if (run.tau or {}).get("mode") else "teacher")
    fig, (ax_curves, ax_tau, ax_energy) = plt.subplots(1, 3, figsize=(14, 3.8))
    _plot_curves(ax_curves, run)
    ax_curves.set_title(f"test accuracy {run.test_accuracy:.1f}%")
    _plot_tau(ax_tau, run, color)
    _plot_energy(ax_energy, run)
    fig.suptitle(caption or run.name, fontsize=10)
    fig.tight_layout()
    return fig


def figure_png(fig, dpi: int = 80) -> bytes:
    """A figure as PNG bytes (what an image widget shows), the figure closed afterwards."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return buffer.getvalue()


def table_html(table: pd.DataFrame, max_rows: int = 200) -> str:
    """The runs as an HTML table (at most ``max_rows``, saying how many more there are)."""
    shown = table.drop(columns=["key"]).head(max_rows)
    html = shown.to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0)
    more = len(table) - len(shown)
    return html + (f"<p>... and {more} more; narrow the list with the filters.</p>" if more > 0 else "")


def energy_note(table: pd.DataFrame) -> str:
    """What the energy column is: device energy per run, and whether it was measured or estimated."""
    sources = set(table["energy_source"])
    if not sources:
        how = "no runs"
    elif sources == {"measured"}:
        how = "measured"
    elif sources == {"estimated"}:
        how = "estimated"
    else:
        how = "partly estimated"
    return f"energy_kwh: device energy of each run before PUE ({how})"


def empty_store_message(root: str | Path, profile: str) -> str:
    """What to do when the store holds no finished run: how to fill one."""
    return (f"The run store {root} holds no finished run yet. Fill it, then run this notebook again:\n"
            f"  - run notebooks/00_start_here.ipynb with results_dir pointing here (one teacher and one student), or\n"
            f"  - ./run_all.sh --profile {profile} --results-dir {root}   (the runs of every notebook), or\n"
            f"  - point this notebook's results_dir at a store that holds runs (results/<profile> by default).")

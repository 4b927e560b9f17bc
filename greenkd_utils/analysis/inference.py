"""Inference cost of a trained model: time and energy of one pass over the test set (Figure 1b, c).

One pass over a small test set can take milliseconds, far below what a timer
or an energy counter resolves reliably.  So the pass is repeated until the
measured block lasts at least ``min_duration_s`` (about a second), under one
:class:`~greenkd_utils.energy.meter.EnergyMeter`, and the per-pass time and energy
are the block's totals divided by the number of passes.  One untimed pass
runs first (memory allocation, cuDNN autotuning, lazy initialisation).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd
import torch

from greenkd_utils.analysis import plotting
from greenkd_utils.analysis.predictions import load_models, test_split
from greenkd_utils.energy.meter import EnergyMeter
from greenkd_utils.energy.report import DEFAULT_CARBON_INTENSITY, DEFAULT_PUE, EnergyReport
from greenkd_utils.runs.device_data import predict_logits
from greenkd_utils.runs.execution import resolve_device
from greenkd_utils.runs.record import RunResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InferenceCost:
    """Per-pass cost of classifying the whole test set once."""

    n_images: int
    passes: int
    batch_size: int
    time_per_pass_s: float
    time_per_pass_median_s: float
    time_per_pass_std_s: float
    energy_kwh_per_pass: float
    energy_kwh_pue_per_pass: float
    co2_g_per_pass: float
    energy_source: str
    energy_method: str
    device: str

    @classmethod
    def from_report(cls, report: EnergyReport, pass_seconds: Sequence[float], seconds: float, n_images: int,
                    batch_size: int, device: str) -> "InferenceCost":
        """Per-pass values from the metered block's ``report`` and total ``seconds``; ``pass_seconds``
        are the single passes' times (their spread shows how steady the machine was)."""
        passes = len(pass_seconds)
        methods = "; ".join(f"{c.name}: {c.source} ({c.short_method})" for c in report.components.values())
        return cls(
            n_images=n_images,
            passes=passes,
            batch_size=batch_size,
            time_per_pass_s=seconds / passes,
            time_per_pass_median_s=float(np.median(pass_seconds)),
            time_per_pass_std_s=float(np.std(pass_seconds, ddof=1)) if passes > 1 else 0.0,
            energy_kwh_per_pass=report.energy_kwh / passes,
            energy_kwh_pue_per_pass=report.energy_kwh_pue / passes,
            co2_g_per_pass=report.co2_g / passes,
            energy_source=report.source,
            energy_method=methods,
            device=device,
        )


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_inference(
    model: torch.nn.Module,
    images: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    batch_size: int = 512,
    min_duration_s: float = 1.0,
    max_passes: int = 10_000,
    pue: float = DEFAULT_PUE,
    carbon_intensity_g_per_kwh: float = DEFAULT_CARBON_INTENSITY,
) -> InferenceCost:
    """Time and energy of one pass of ``model`` over ``images`` (uint8, on the model's device).

    Whole passes run under one energy meter until the block has lasted at least
    ``min_duration_s`` (or ``max_passes`` passes have run).
    """
    if images.shape[0] == 0:
        raise ValueError("measure_inference needs at least one image")
    if not min_duration_s > 0 or max_passes < 1 or batch_size < 1:
        raise ValueError(
            "min_duration_s must be > 0, max_passes and batch_size >= 1; "
            f"got {min_duration_s}, {max_passes}, {batch_size}"
        )
    device = images.device
    model = model.eval()

    def one_pass() -> None:
        predict_logits(model, images, mean, std, batch_size=batch_size)

    one_pass()  # warm-up, not measured
    _synchronize(device)

    with EnergyMeter(pue=pue, carbon_intensity_g_per_kwh=carbon_intensity_g_per_kwh, device=device) as meter:
        began = time.perf_counter()
        pass_seconds: List[float] = []
        # Whole passes until the block is long enough: no calibration pass, and a slow pass ends it early.
        while len(pass_seconds) < max_passes and time.perf_counter() - began < min_duration_s:
            tick = time.perf_counter()
            one_pass()
            _synchronize(device)  # per pass, so each pass's time is its own
            pass_seconds.append(time.perf_counter() - tick)
        seconds = time.perf_counter() - began
    log.info("inference: %d passes over %d images in %.3f s", len(pass_seconds), images.shape[0], seconds)
    return InferenceCost.from_report(meter.report, pass_seconds, seconds, int(images.shape[0]), batch_size, str(device))


def inference_table(exp, runs: Dict[str, RunResult], batch_size: int = 512, min_duration_s: float = 1.0,
                    device: Optional[str] = None) -> pd.DataFrame:
    """Figure 1 (b, c): one row per method with the per-pass time, energy and CO2eq on the test set.

    Uses the experiment's PUE and carbon intensity. Models are measured one
    after the other in the order of ``runs``.
    """
    target = str(resolve_device(device or exp.device))
    models = load_models(exp, runs, target)
    rows = []
    for method, run in runs.items():
        images, _, mean, std, _ = test_split(exp, run, target)
        cost = measure_inference(models[method], images, mean, std, batch_size=batch_size,
                                 min_duration_s=min_duration_s, pue=exp.pue,
                                 carbon_intensity_g_per_kwh=exp.carbon_intensity)
        params = sum(p.numel() for p in models[method].parameters())
        row = {"method": method, "model": run.config.model, "seed": run.config.seed,
               "parameters_millions": params / 1e6}
        row.update(asdict(cost))
        rows.append(row)
    return pd.DataFrame(rows)


def plot_inference_costs(table: pd.DataFrame, axes=None, title: Optional[str] = None):
    """Two bar panels: time per test-set pass and CO2eq per pass, one bar per method (Figure 1b, c)."""
    fig, axes = plotting.figure_and_axes(axes, 2, figsize=(9, 3.4))
    ax_time, ax_co2 = axes
    labels = [plotting.method_label(m) for m in table["method"]]
    colors = [plotting.method_color(m) for m in table["method"]]
    x = range(len(table))
    # Error bars: the spread of single passes (a busy machine shows up here, not in the mean alone).
    ax_time.bar(x, table["time_per_pass_s"] * 1e3, yerr=table["time_per_pass_std_s"] * 1e3, capsize=3, color=colors)
    ax_time.set_ylabel("time per test-set pass (ms, mean +- std)")
    ax_co2.bar(x, table["co2_g_per_pass"] * 1e3, color=colors)
    source = "/".join(sorted(set(table["energy_source"])))
    ax_co2.set_ylabel(f"CO$_2$eq per test-set pass (mg, {source})")
    for ax in (ax_time, ax_co2):
        ax.set_xticks(list(x), labels, rotation=25, ha="right", fontsize=8)
    ax_time.set_title("(b) inference time")
    ax_co2.set_title("(c) inference CO$_2$eq")
    if title:
        fig.suptitle(title)
    return fig

"""Smoke tests of Table 5, Figure 1 and Figure 4: each notebook runs at the smoke profile and writes what it promises.

The three share one run store (as in run_all.sh): the first (Figure 4) pays for seed 0's teacher and KD runs,
Figure 1 adds the student, and Table 5 (run on seed 0 only) reuses them all.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
from notebook_runner import execute, smoke_dirs


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return smoke_dirs(tmp_path_factory.mktemp("table5_figures"))


@pytest.fixture(scope="module", autouse=True)
def one_thread_kernels():
    """The notebook kernels get one intra-op thread, as conftest.py gives the test process (same reason:
    on a small shared CPU, two OpenMP threads mostly wait on each other). The kernels inherit the variable."""
    previous = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    if previous is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = previous


def figure_exists(out, name):
    for suffix in (".png", ".pdf"):
        assert (out / f"{name}{suffix}").stat().st_size > 0, f"{name}{suffix} missing or empty"


def test_figure4_logits_gradcam_confusion(dirs):
    out = execute("figure4_logits_gradcam_confusion", dirs)
    outputs = pd.read_csv(out / "figure4a_outputs.csv")
    assert set(outputs["method"]) == {"teacher", "kd_tuned", "kd_stochastic"}
    assert (outputs["true_class"].astype(str) == "2").all()
    sums = outputs.groupby("method")["probability"].sum()
    assert np.allclose(sums, 1.0, atol=1e-5)
    cams = pd.read_csv(out / "figure4b_gradcam.csv")
    assert set(cams["method"]) == {"kd_tuned", "kd_stochastic"} and cams["image_index"].nunique() == 4
    assert (cams["feature_map"] == "2x2").all()
    assert (cams["heatmap_std"] > 0).any(), "every Grad-CAM map is constant"
    confusion = pd.read_csv(out / "figure4c_confusion.csv")
    assert (confusion.groupby("method")["count"].sum() == 100).all()
    for name in ("figure4a_outputs", "figure4b_gradcam", "figure4c_confusion"):
        figure_exists(out, name)
    assert len(pd.read_csv(out / "figure4_vs_paper.csv")) == 3


def test_figure1_carbon_curves(dirs):
    out = execute("figure1_carbon_curves", dirs, min_inference_s=0.25)
    curves = pd.read_csv(out / "figure1_training_curves.csv")
    assert set(curves["method"]) == {"teacher", "student", "kd_tuned", "kd_stochastic"}
    for method, group in curves.groupby("method"):
        assert (np.diff(group["co2_g"]) >= 0).all(), f"cumulative CO2 of {method} goes down"
        assert (np.diff(group["epoch"]) > 0).all()
        assert (group["co2_g"] > 0).all()
    # The tuned sweep lays its grid (2 runs of 2 epochs at smoke) end to end.
    tuned = curves[curves["method"] == "kd_tuned"]
    assert tuned["segment"].nunique() == 2 and tuned["epoch"].max() == 4
    totals = pd.read_csv(out / "figure1_training_totals.csv").set_index("method")
    assert totals.loc["kd_tuned", "co2_g"] > totals.loc["kd_stochastic", "co2_g"]
    inference = pd.read_csv(out / "figure1_inference.csv")
    assert list(inference["method"]) == ["teacher", "student", "kd_tuned", "kd_stochastic"]
    assert (inference["time_per_pass_s"] > 0).all() and (inference["co2_g_per_pass"] > 0).all()
    assert (inference["passes"] >= 1).all() and (inference["time_per_pass_std_s"] >= 0).all() and (inference["n_images"] == 100).all()
    comparison = pd.read_csv(out / "figure1_vs_paper.csv")
    assert comparison.set_index("metric").loc["inference_time_s", "paper_per_pass"] == 4.7
    figure_exists(out, "figure1")


def test_table5_metrics(dirs):
    # One seed keeps the smoke test short (the mean/std over seeds is unit-tested in test_metrics.py).
    out = execute("table5_metrics", dirs, seeds=[0])
    table = pd.read_csv(out / "table5.csv")
    assert list(table["method"]) == ["teacher", "kd_tuned", "kd_stochastic"]
    assert (table["n_seeds"] == 1).all()
    assert table["accuracy_pct"].between(0, 100).all()
    for metric in ("precision", "recall", "specificity", "prevalence", "f1"):
        assert table[metric].between(0, 1).all(), metric
    assert (table["kappa"] <= 1).all() and (table["kappa"] >= -1).all()
    # Macro one-vs-rest prevalence is 1/K whatever the model.
    assert np.allclose(table["prevalence"], 0.1)
    comparison = pd.read_csv(out / "table5_vs_paper.csv")
    assert len(comparison) == 3 * 7 and comparison["paper"].notna().all()
    consistency = pd.read_csv(out / "table5_paper_consistency.csv")
    assert (consistency["one_vs_rest_specificity"] > 0.99).all()
    per_class = pd.read_csv(out / "table5_per_class.csv")
    assert per_class["prevalence"].sum() == pytest.approx(1.0)
    assert "macro" in (out / "table5.md").read_text()
    figure_exists(out, "table5")
    assert json.loads((out / "table5_metrics.summary.json").read_text())["profile"] == "smoke"

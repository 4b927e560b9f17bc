"""The Table 6 notebook (data-free KD) runs at the smoke profile and writes what it promises."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from notebook_runner import execute, smoke_dirs

pytestmark = pytest.mark.notebook


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    # One intra-op thread in the kernel, as conftest.py sets for this process: on two busy cores
    # two OpenMP threads made these small steps an order of magnitude slower.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        patch.setenv("MKL_NUM_THREADS", "1")
        return execute("table6_dfkd", smoke_dirs(tmp_path_factory.mktemp("table6")))


def test_table6_has_every_cell_with_both_phases(out):
    table = pd.read_csv(out / "table6.csv")
    assert sorted(table["dfkd_method"].unique()) == ["cmi", "deepinversion"]
    assert set(table["method"]) == {"kd_tuned", "kd_stochastic"}
    assert len(table) == 4  # smoke: one dataset x two synthesizers x (tuned, stochastic)
    assert table["accuracy_pct"].between(0, 100).all()
    # The totals are the sum of the phases, and synthesis is part of every run's bill.
    total = table["synthesis_gflops_millions"] + table["student_gflops_millions"]
    assert (abs(total - table["training_gflops_millions"]) <= 1e-9 * table["training_gflops_millions"]).all()
    assert (table["synthesis_gflops_millions"] > 0).all() and (table["energy_synthesis_kwh"] > 0).all()
    phases = table["energy_synthesis_kwh"] + table["energy_student_kwh"]
    assert ((phases - table["energy_kwh"]).abs() <= 1e-6 * table["energy_kwh"] + 1e-12).all()
    # The tuned row pays for its whole grid: about grid-size times the stochastic FLOPs.
    for method, part in table.groupby("dfkd_method"):
        tuned = part[part["method"] == "kd_tuned"].iloc[0]
        stochastic = part[part["method"] == "kd_stochastic"].iloc[0]
        ratio = tuned["training_gflops_millions"] / stochastic["training_gflops_millions"]
        assert ratio == pytest.approx(tuned["grid_size"], rel=1e-6), method


def test_table6_grid_comparison_and_figures(out):
    grid = pd.read_csv(out / "table6_tau_grid.csv")
    assert set(grid["temperature"]) == {"fixed", "stochastic"}
    assert grid.groupby(["dfkd_method", "seed"])["chosen_on_validation"].sum().eq(1).all()
    comparison = pd.read_csv(out / "table6_vs_paper.csv")
    assert set(comparison["paper_dataset"]) == {"cifar10"}
    assert comparison["paper"].notna().all()  # every row found its paper cell
    assert set(comparison["metric"]) == {"accuracy_pct", "training_gflops_millions", "energy_kwh_pue", "co2_g"}
    for name in ("table6_digits", "table6_digits_phases", "table6_digits_samples", "table6_tau_grid"):
        assert (out / f"{name}.png").stat().st_size > 0 and (out / f"{name}.pdf").stat().st_size > 0
    summary = json.loads((out / "table6_dfkd.summary.json").read_text())
    assert summary["profile"] == "smoke" and "table6" in summary["tables"]

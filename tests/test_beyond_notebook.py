"""The beyond_temperature_strategies notebook runs at the smoke profile and writes the table it promises."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from notebook_runner import execute, smoke_dirs

pytestmark = pytest.mark.notebook

COLUMNS = [
    "strategy", "loss", "n_seeds", "accuracy_mean_pct", "ci_low_pct", "ci_high_pct", "energy_kwh",
    "energy_source", "co2_g", "training_gflops_millions", "flops_ratio_to_grid", "runs_trained", "hardware",
]
STRATEGIES = [
    "tuned_grid", "tuned_successive_halving", "stochastic_per_batch", "stochastic_per_sample", "ctkd",
    "logit_standardization", "logit_standardization_stochastic",
]


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    # One intra-op thread in the kernel, as conftest.py sets for this process.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        patch.setenv("MKL_NUM_THREADS", "1")
        return execute("beyond_temperature_strategies", smoke_dirs(tmp_path_factory.mktemp("beyond")))


def test_table_has_every_strategy_with_its_interval_and_bill(out):
    table = pd.read_csv(out / "beyond_temperature_strategies.csv")
    assert list(table.columns) == COLUMNS
    assert list(table["strategy"]) == STRATEGIES
    assert set(table["loss"]) == {"hkd"}
    assert (table["n_seeds"] == 2).all()  # the smoke profile's two seeds
    assert table["accuracy_mean_pct"].between(0, 100).all()
    assert (table["ci_low_pct"] <= table["accuracy_mean_pct"] + 1e-9).all()
    assert (table["accuracy_mean_pct"] <= table["ci_high_pct"] + 1e-9).all()
    assert (table["energy_kwh"] > 0).all() and (table["co2_g"] > 0).all()
    assert (table["training_gflops_millions"] > 0).all()
    rows = table.set_index("strategy")
    # A tuned row pays for its whole grid (smoke: two taus); every single-run strategy needs one run.
    assert rows.loc["tuned_grid", "runs_trained"] == 2 and rows.loc["tuned_successive_halving", "runs_trained"] == 2
    single = [s for s in STRATEGIES if not s.startswith("tuned")]
    assert (rows.loc[single, "runs_trained"] == 1).all()
    flops = rows["training_gflops_millions"]
    assert flops["tuned_grid"] == pytest.approx(2 * flops["stochastic_per_batch"], rel=1e-9)
    # Successive halving pays for at least one full run and never more than the grid: a survivor continues
    # its rung (smoke: two-epoch runs whose near-chance validation accuracies often tie, and ties go on).
    assert flops["stochastic_per_batch"] <= flops["tuned_successive_halving"] <= flops["tuned_grid"] * (1 + 1e-9)
    ratio = rows["flops_ratio_to_grid"]
    assert ratio["tuned_grid"] == pytest.approx(1.0)
    assert ratio["stochastic_per_batch"] == pytest.approx(0.5, rel=1e-9)  # one run against a grid of two
    assert ratio["stochastic_per_batch"] <= ratio["tuned_successive_halving"] <= 1.0 + 1e-9
    # Single runs of the same length and models cost the same FLOPs.
    assert np.allclose(flops[single], flops["stochastic_per_batch"], rtol=1e-9)


def test_per_seed_table_figure_and_summary(out):
    per_seed = pd.read_csv(out / "beyond_temperature_strategies_per_seed.csv")
    assert len(per_seed) == 7 * 2 and set(per_seed["seed"]) == {0, 1}
    searched = per_seed[per_seed["strategy"].str.startswith("tuned")]
    assert searched["chosen_tau"].isin([2.0, 4.0]).all()
    figure = out / "beyond_temperature_strategies"
    assert figure.with_suffix(".png").stat().st_size > 0 and figure.with_suffix(".pdf").stat().st_size > 0
    assert per_seed["flops_ratio_to_grid"].between(0, 1 + 1e-9).all()
    halving = per_seed[per_seed["strategy"] == "tuned_successive_halving"]
    assert (halving["teacher_passes"] <= 2).all()  # at most one per trial, and smoke augments (none then)
    comparison = pd.read_csv(out / "beyond_temperature_strategies_halving_vs_stochastic.csv")
    assert list(comparison["quantity"]) == ["accuracy_difference_pct", "energy_ratio", "flops_ratio"]
    assert (comparison["n_seeds"] == 2).all()
    assert (comparison["ci_low"] <= comparison["mean"] + 1e-9).all() and (comparison["mean"] <= comparison["ci_high"] + 1e-9).all()
    summary = json.loads((out / "beyond_temperature_strategies.summary.json").read_text())
    assert summary["profile"] == "smoke" and "beyond_temperature_strategies" in summary["tables"]

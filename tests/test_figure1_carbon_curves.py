"""Tests for greenkd_utils.paper.figure1_carbon_curves: per-epoch cost curves from a run's history, and the
teacher's inference cost beside the paper's."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from greenkd_utils.paper import figure1_carbon_curves as curves


def fake_run(name, energies, tau=None, seed=0):
    history = [{"epoch": i + 1, "energy_kwh": e, "test_accuracy": 50.0 + i, "val_accuracy": 40.0 + i,
                "energy_source": "estimated"} for i, e in enumerate(energies)]
    mode = {"mode": "fixed", "tau": tau} if tau is not None else {"mode": None}
    return SimpleNamespace(name=name, history=history, tau=mode, config=SimpleNamespace(seed=seed))


def test_curve_converts_kwh_with_pue_and_intensity():
    frame = curves.curve_from_history(fake_run("a", [0.001, 0.003]).history, pue=2.0, carbon_intensity_g_per_kwh=100.0)
    assert frame["co2_g"].tolist() == pytest.approx([0.2, 0.6])
    assert frame["energy_kwh_pue"].tolist() == pytest.approx([0.002, 0.006])


def test_grid_runs_are_laid_end_to_end():
    grid = [fake_run("tau1", [1.0, 2.0], tau=1.0), fake_run("tau2", [1.5, 3.0], tau=2.0)]
    curve = curves.method_curve("kd_tuned", grid, pue=1.0, carbon_intensity_g_per_kwh=1.0)
    assert curve["epoch"].tolist() == [1, 2, 3, 4]
    assert curve["epoch_in_run"].tolist() == [1, 2, 1, 2]
    assert curve["energy_kwh"].tolist() == pytest.approx([1.0, 2.0, 3.5, 5.0])
    assert curve["tau"].tolist() == ["1", "1", "2", "2"]
    assert np.all(np.diff(curve["co2_g"]) > 0)
    totals = curves.curve_totals(curve)
    assert totals.loc[0, "runs"] == 2 and totals.loc[0, "energy_kwh"] == pytest.approx(5.0)


def test_totals_take_the_grid_run_chosen_on_validation():
    better = fake_run("tau1", [1.0, 2.0], tau=1.0)
    better.history[-1].update(val_accuracy=90.0, test_accuracy=88.0)
    worse = fake_run("tau2", [1.0, 2.0], tau=2.0)  # ends at val 41, test 51
    totals = curves.curve_totals(curves.method_curve("kd_tuned", [better, worse], 1.0, 1.0))
    assert totals.loc[0, "test_accuracy"] == 88.0 and totals.loc[0, "chosen_tau"] == "1"


def test_empty_history_and_unknown_method_are_errors():
    with pytest.raises(ValueError, match="history is empty"):
        curves.curve_from_history([], 1.67, 294)
    with pytest.raises(ValueError, match="valid: teacher"):
        curves.training_curves(None, "digits", 0, methods=("qat",))


def test_inference_compared_with_the_paper_uses_the_teachers_row():
    costs = pd.DataFrame([{"method": "teacher", "model": "resnet18", "time_per_pass_s": 0.47, "co2_g_per_pass": 0.0087,
                           "n_images": 1000, "energy_source": "estimated", "device": "cpu"}])
    table = curves.compare_inference_with_paper(costs)
    by_metric = table.set_index("metric")
    assert by_metric.loc["inference_time_s", "paper_per_pass"] == 4.7
    assert by_metric.loc["inference_co2_g", "paper_per_pass"] == 0.087
    assert by_metric.loc["inference_time_s", "ratio_per_pass"] == pytest.approx(0.1)
    # 0.47 s / 1000 images vs 4.7 s / 10000 images: the same per image.
    assert by_metric.loc["inference_time_s", "ratio_per_image"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="teacher"):
        curves.compare_inference_with_paper(costs.assign(method="student"))

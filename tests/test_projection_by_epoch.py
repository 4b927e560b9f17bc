"""The bill projects a run epoch by epoch from its two-epoch calibration: the first epoch (with what a run
does once), every later epoch as the second, then the tail; and a successive-halving search apart, as an
expectation beside its grid's cost."""

from __future__ import annotations

import dataclasses

import pytest

from greenkd_utils.core.config import TemperatureSpec
from greenkd_utils.energy.report import EnergyReport
from greenkd_utils.runs.plan import PlannedRun, PlannedSearch, RunPlan
from greenkd_utils.runs.projection import _by_epoch, _projected, calibration_config, project
from greenkd_utils.runs.record import RunResult
from greenkd_utils.runs.successive_halving import HalvingSettings


def test_by_epoch_is_first_then_the_second_for_every_later_epoch_then_the_tail():
    # First epoch 10 s (a 6 s teacher pass and warm-up in it), later epochs 4 s, tail 3 s.
    assert _by_epoch([10.0, 14.0], 17.0, 1) == pytest.approx(13.0)
    assert _by_epoch([10.0, 14.0], 17.0, 2) == pytest.approx(17.0)  # the calibration itself
    assert _by_epoch([10.0, 14.0], 17.0, 30) == pytest.approx(10.0 + 29 * 4.0 + 3.0)
    # A one-epoch record (an earlier calibration): every epoch as its only one.
    assert _by_epoch([5.0], 6.0, 3) == pytest.approx(5.0 + 2 * 5.0 + 1.0)


def test_a_run_is_projected_from_its_calibrations_epochs_not_from_its_flops(smoke):
    config = smoke.kd_config("digits", 0, "hkd", TemperatureSpec.fixed(4.0))
    config = config.replace(train=dataclasses.replace(config.train, epochs=30))
    shape = calibration_config(config)
    # The teacher pass is 90% of the calibration's FLOPs but a small share of its time.
    flops = {"training_flops": 1.0e12, "teacher_outputs_reused": True, "teacher_forwards": 900,
             "per_sample": {"teacher_forward": 1.0e9}}
    energy = EnergyReport.from_dict(_energy_dict(0.003))
    record = RunResult(key=shape.key, name=shape.name, config=shape, test_accuracy=0.0, val_accuracy=0.0,
                       energy=energy, flops=flops, wall_time_s=17.0, tau={"mode": "fixed"},
                       history=[{"epoch": 1, "wall_time_s": 10.0, "energy_kwh": 0.0015},
                                {"epoch": 2, "wall_time_s": 14.0, "energy_kwh": 0.0025}],
                       data={}, versions={}, device="cpu", finished_at="")
    projected = _projected(PlannedRun(config, ["test"]), record)
    assert projected.wall_time_s == pytest.approx(10.0 + 29 * 4.0 + 3.0)
    assert projected.energy_kwh == pytest.approx(0.0015 + 29 * 0.001 + 0.0005)
    # FLOPs: the teacher pass once, the student's share of the two epochs per epoch.
    assert projected.training_flops == pytest.approx(0.9e12 + 30 * 0.1e12 / 2)


def _energy_dict(kwh):
    return {"duration_s": 17.0, "components": {"cpu": {"energy_kwh": kwh, "source": "estimated", "method": "test"}}}


def test_a_search_is_projected_apart_with_its_grid_beside_it(tmp_path, smoke):
    from greenkd_utils.runs.store import RunStore

    base = smoke.kd_config("digits", 0, "hkd", TemperatureSpec.fixed(4.0))
    grid = [base.replace(temperature=TemperatureSpec.fixed(t)) for t in (1.0, 2.0, 4.0, 8.0)]
    plan = RunPlan()
    plan.add_all(grid, "test")
    plan.add_search(PlannedSearch("test", "halving", grid, HalvingSettings(1, 2)))
    bill = project(plan, RunStore(tmp_path / "store"), "smoke", 1.0, 1.0, device="cpu")
    (search,) = bill.searches
    full = {r.key: r for r in bill.runs}[grid[0].key]
    assert search.n_taus == 4 and search.epochs == base.train.epochs
    assert search.grid_training_flops == pytest.approx(4 * full.training_flops, rel=1e-9)
    assert search.grid_wall_time_s == pytest.approx(4 * full.wall_time_s, rel=1e-9)
    assert 4 * 1 <= search.expected_epochs <= 4 * search.epochs
    assert 0 < search.flops_ratio_to_grid <= 1.0 + 1e-9
    # Not in the totals: its full-length runs are the grid's, already counted.
    assert bill.totals["runs_to_train"] == len(plan)
    assert bill.to_dict()["searches"][0]["flops_ratio_to_grid"] == pytest.approx(search.flops_ratio_to_grid)

"""Tests for greenkd_utils.runs.sweep: the tuned baseline (one fixed-tau run per grid value, chosen on validation)."""

from __future__ import annotations

import pytest

from greenkd_utils.core.config import TemperatureSpec
from greenkd_utils.energy.report import ComponentEnergy, EnergyReport
from greenkd_utils.runs import lifecycle, sweep
from greenkd_utils.runs.sweep import TunedResult, choose_on_validation, tuned_sweep
from greenkd_utils.runs.record import RunResult

# --------------------------------------------------------------------------- a real sweep (smoke)


def test_tuned_sweep_over_a_small_grid(store, smoke, monkeypatch):
    base = smoke.kd_config("digits", seed=0, loss="hkd")  # stochastic by default: the sweep fixes tau
    taus = [1, 6]
    tuned = tuned_sweep(base, taus, store, device="cpu", progress=False)
    assert isinstance(tuned, TunedResult)
    assert tuned.taus == [1.0, 6.0]
    for run, tau in zip(tuned.runs, taus):
        assert run.config == base.replace(temperature=TemperatureSpec.fixed(tau))
        assert run.tau == {"mode": "fixed", "tau": float(tau)}
    # The teacher is shared, so the runs differ only by tau.
    assert len({run.config.teacher.key for run in tuned.runs}) == 1

    # The winner has the best validation accuracy; ties go to the earlier grid value.
    best_val = max(run.val_accuracy for run in tuned.runs)
    first_best = next(run for run in tuned.runs if run.val_accuracy == best_val)
    assert tuned.chosen is first_best
    assert tuned.chosen_tau == first_best.config.temperature.tau
    assert tuned.val_accuracy == best_val and tuned.test_accuracy == first_best.test_accuracy

    # The cost is the whole grid's.
    assert tuned.training_flops == sum(run.training_flops for run in tuned.runs)
    assert tuned.training_flops == pytest.approx(2 * tuned.runs[0].training_flops)
    assert tuned.training_gflops_millions == pytest.approx(tuned.training_flops / 1e15)
    assert tuned.wall_time_s == pytest.approx(sum(run.wall_time_s for run in tuned.runs))
    energy = tuned.energy
    assert energy.energy_kwh == pytest.approx(sum(run.energy.energy_kwh for run in tuned.runs), rel=1e-12)
    assert energy.duration_s == pytest.approx(sum(run.energy.duration_s for run in tuned.runs))
    assert energy.co2_g == pytest.approx(sum(run.energy.co2_g for run in tuned.runs), rel=1e-12)
    assert energy.energy_kwh > max(run.energy.energy_kwh for run in tuned.runs)

    # A second sweep loads every run from the store.
    def no_training(*args, **kwargs):
        raise AssertionError("a cached grid run was trained again")

    monkeypatch.setattr(lifecycle, "_live", no_training)
    again = tuned_sweep(base, taus, store, device="cpu", progress=False)
    assert [r.to_dict() for r in again.runs] == [r.to_dict() for r in tuned.runs]
    assert again.chosen_tau == tuned.chosen_tau


def test_sweep_needs_a_validation_split_and_a_kd_config(store, smoke):
    base = smoke.kd_config("digits", seed=0)
    with pytest.raises(ValueError, match="val_fraction > 0"):
        tuned_sweep(base.replace(val_fraction=0.0), [2, 4], store, device="cpu", progress=False)
    with pytest.raises(ValueError, match="role='kd'"):
        tuned_sweep(smoke.student_config("digits", 0), [2, 4], store, device="cpu", progress=False)
    assert list(store.runs_dir.iterdir()) == []  # nothing was trained


# --------------------------------------------------------------------------- constructed results


def _energy(kwh: float, seconds: float, source: str = "estimated") -> EnergyReport:
    return EnergyReport(
        duration_s=seconds,
        components={
            "cpu": ComponentEnergy("cpu", kwh * 0.75, source, "TDP model"),
            "dram": ComponentEnergy("dram", kwh * 0.25, "estimated", "RSS model"),
        },
    )


def _fake_result(config, val: float, test: float, kwh: float, flops: float, seconds: float) -> RunResult:
    return RunResult(
        key=config.key,
        name=config.name,
        config=config,
        test_accuracy=test,
        val_accuracy=val,
        energy=_energy(kwh, seconds),
        flops={"training_flops": flops, "samples_seen": 1, "per_sample": {}},
        wall_time_s=seconds,
        tau={"mode": "fixed", "tau": config.temperature.tau},
        history=[],
        data={},
        versions={},
        device="cpu",
        finished_at="",
    )


@pytest.fixture
def fake_grid(monkeypatch, smoke):
    """tuned_sweep with train_run replaced by a table of (val, test) accuracies per tau."""
    table = {
        1.0: (80.0, 85.0),
        2.0: (85.0, 95.0),  # best on test ...
        4.0: (90.0, 80.0),  # ... but this one is best on validation
        8.0: (70.0, 70.0),
    }
    asked = []

    def fake_train_run(config, store, device, data_root, progress, **options):
        tau = config.temperature.tau
        asked.append(tau)
        val, test = table[tau]
        return _fake_result(config, val, test, kwh=tau * 1e-3, flops=tau * 1e12, seconds=tau * 10)

    monkeypatch.setattr(sweep, "train", fake_train_run)
    return smoke.kd_config("digits", seed=0), table, asked


def test_tau_is_chosen_on_validation_never_on_test(fake_grid, store):
    base, table, asked = fake_grid
    tuned = tuned_sweep(base, [1, 2, 4, 8], store)
    assert asked == [1.0, 2.0, 4.0, 8.0]
    best_on_test = max(table, key=lambda tau: table[tau][1])
    assert best_on_test == 2.0
    assert tuned.chosen_tau == 4.0 != best_on_test
    assert tuned.val_accuracy == 90.0
    assert tuned.test_accuracy == 80.0  # the chosen tau's test accuracy, not the best test accuracy


def test_tuned_cost_is_the_sum_over_the_grid(fake_grid, store):
    base, _, _ = fake_grid
    tuned = tuned_sweep(base, [1, 2, 4, 8], store)
    # tau = 1 + 2 + 4 + 8 = 15 in every unit.
    assert tuned.energy.energy_kwh == pytest.approx(15e-3, rel=1e-12)
    assert tuned.energy.components["cpu"].energy_kwh == pytest.approx(15e-3 * 0.75, rel=1e-12)
    assert tuned.energy.components["dram"].energy_kwh == pytest.approx(15e-3 * 0.25, rel=1e-12)
    assert tuned.energy.duration_s == pytest.approx(150.0)
    assert tuned.energy.co2_g == pytest.approx(15e-3 * 1.67 * 294.0, rel=1e-12)
    assert tuned.energy.source == "estimated"
    assert tuned.training_flops == pytest.approx(15e12, rel=1e-12)
    assert tuned.training_gflops_millions == pytest.approx(0.015)
    assert tuned.wall_time_s == pytest.approx(150.0)
    # ... while the accuracy is the chosen run's alone.
    assert tuned.chosen.energy.energy_kwh == pytest.approx(4e-3)


def test_ties_go_to_the_earlier_grid_value(smoke):
    base = smoke.kd_config("digits", seed=0)
    runs = [
        _fake_result(base.replace(temperature=TemperatureSpec.fixed(tau)), val, 50.0, 1e-3, 1.0, 1.0)
        for tau, val in [(3.0, 60.0), (5.0, 75.0), (7.0, 75.0), (9.0, 10.0)]
    ]
    assert choose_on_validation(runs).config.temperature.tau == 5.0
    assert choose_on_validation(runs[::-1]).config.temperature.tau == 7.0


def test_choosing_without_validation_is_an_error(smoke):
    base = smoke.kd_config("digits", seed=0, temperature=TemperatureSpec.fixed(2))
    with pytest.raises(ValueError, match="empty"):
        choose_on_validation([])
    no_val = [_fake_result(base, float("nan"), 99.0, 1e-3, 1.0, 1.0)]
    with pytest.raises(ValueError, match="test set is never used"):
        choose_on_validation(no_val)

"""Bad values are refused by name, with what the setting accepts, before anything trains: the temperature
schedules, the run configs, the energy meter, and CIFAR files that cannot be read."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from dataset_writers import write_cifar10, write_cifar100

from greenkd_utils.core.config import RunConfig, TemperatureSpec, TrainSettings
from greenkd_utils.core.data import load_dataset
from greenkd_utils.core.dataset_sources import DatasetCorruptError, DatasetNotFoundError
from greenkd_utils.core.temperature import make_temperature
from greenkd_utils.energy.meter import EnergyMeter

NOT_FINITE = [math.nan, math.inf, -math.inf]


# --------------------------------------------------------------------------- the energy meter


@pytest.mark.parametrize("pue", [0.99, 0.0, -1.67, *NOT_FINITE, "1.67", True, None])
def test_meter_refuses_a_pue_below_one_or_not_a_number(pue):
    with pytest.raises(ValueError, match=r"^pue must be .*>= 1 and finite; got"):
        EnergyMeter(pue=pue)


@pytest.mark.parametrize("intensity", [-1.0, -1e-9, *NOT_FINITE, "294", False])
def test_meter_refuses_a_negative_or_not_finite_carbon_intensity(intensity):
    with pytest.raises(ValueError, match=r"^carbon_intensity_g_per_kwh must be .*>= 0 and finite; got"):
        EnergyMeter(carbon_intensity_g_per_kwh=intensity)


def test_meter_accepts_the_edges():
    meter = EnergyMeter(pue=1, carbon_intensity_g_per_kwh=0)
    assert (meter.pue, meter.carbon_intensity_g_per_kwh) == (1.0, 0.0)
    assert EnergyMeter(pue=np.float32(1.5)).pue == 1.5


# --------------------------------------------------------------------------- temperatures


@pytest.mark.parametrize("tau", [math.nan, math.inf, 0, 0.0, -1, "4", True, None])
def test_fixed_tau_must_be_a_finite_positive_number(tau):
    with pytest.raises(ValueError, match=r"tau must be .*> 0 and finite"):
        make_temperature("fixed", tau=tau)
    with pytest.raises(ValueError, match=r"a fixed temperature needs tau > 0 and finite"):
        TemperatureSpec(mode="fixed", tau=tau)
    if tau is not None:
        with pytest.raises(ValueError, match=r"a fixed temperature needs tau > 0 and finite"):
            TemperatureSpec.fixed(tau)


@pytest.mark.parametrize("low, high, bad", [
    (math.nan, 20.0, "low"), (2.0, math.nan, "high"), (2.0, math.inf, "high"), (-math.inf, 20.0, "low"),
    ("2", 20.0, "low"), (2.0, None, "high"), (True, 20.0, "low"),
])
@pytest.mark.parametrize("mode", ["stochastic", "stochastic_per_sample", "ctkd"])
def test_tau_range_bounds_must_be_finite_numbers(mode, low, high, bad):
    match = rf"tau range needs two finite numbers low <= high; got {bad}="
    with pytest.raises(ValueError, match=match):
        make_temperature(mode, low=low, high=high)
    with pytest.raises(ValueError, match=match):
        TemperatureSpec(mode=mode, low=low, high=high)


def test_good_temperatures_still_build():
    assert make_temperature("fixed", tau=np.float64(4)).tau == 4.0
    assert TemperatureSpec.fixed(4).tau == 4.0 and TemperatureSpec.stochastic(2, 20).low == 2.0


# --------------------------------------------------------------------------- run configs


@pytest.mark.parametrize("field", ["epochs", "batch_size"])
@pytest.mark.parametrize("value", [2.5, 3.0, "3", True, None, 0])
def test_train_settings_take_whole_numbers(field, value):
    with pytest.raises(ValueError, match=rf"^{field} must be a whole number >= 1; got"):
        TrainSettings(**{field: value})


def test_numpy_whole_numbers_are_stored_as_ints():
    settings = TrainSettings(epochs=np.int64(3), batch_size=np.int32(16))
    assert type(settings.epochs) is int and type(settings.batch_size) is int
    assert settings == TrainSettings(epochs=3, batch_size=16)


@pytest.fixture
def teacher(smoke) -> RunConfig:
    return smoke.teacher_config("digits", seed=0)


@pytest.mark.parametrize("seed", [2.5, "3", True, -1, None])
def test_seed_must_be_a_whole_number(teacher, seed):
    with pytest.raises(ValueError, match=r"^seed must be a whole number >= 0; got"):
        teacher.replace(seed=seed)


def test_seed_from_numpy_keeps_the_key(teacher):
    assert teacher.replace(seed=np.int64(0)).key == teacher.key


@pytest.mark.parametrize("alpha", [1.5, -0.1, math.nan, math.inf, "0.9", None])
def test_alpha_must_lie_in_zero_one(smoke, alpha):
    kd = smoke.kd_config("digits", seed=0)
    with pytest.raises(ValueError, match=r"^alpha must be .*>= 0 and <= 1 and finite; got"):
        kd.replace(alpha=alpha)


def test_alpha_edges_are_accepted(smoke):
    kd = smoke.kd_config("digits", seed=0)
    assert kd.replace(alpha=0).alpha == 0.0 and kd.replace(alpha=1).alpha == 1.0


@pytest.mark.parametrize("subset", [0, 2.5, "100"])
def test_subsets_must_be_whole_numbers(teacher, subset):
    with pytest.raises(ValueError, match=r"^train_subset must be a whole number >= 1"):
        teacher.replace(train_subset=subset)


def test_unknown_dataset_lists_the_valid_ones(teacher):
    with pytest.raises(ValueError, match=r"unknown dataset 'cifar-10'; valid: digits, cifar10, cifar100, tinyimagenet"):
        teacher.replace(dataset="cifar-10")


def test_unknown_model_lists_the_valid_ones(teacher):
    with pytest.raises(ValueError, match=r"unknown model 'resnet19'; valid: .*resnet18.*wrn16_1"):
        teacher.replace(model="resnet19")


def test_profile_overrides_are_checked_before_anything_trains(smoke):
    with pytest.raises(ValueError, match=r"^epochs must be a whole number >= 1; got 2.5"):
        smoke.kd_config("digits", seed=0, epochs=2.5)


# --------------------------------------------------------------------------- CIFAR files


def _damage(path, how):
    if how == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "html":
        path.write_text("<!DOCTYPE html>\n<html><head><title>503 Service Unavailable</title></head></html>\n")
    elif how == "not-a-record":
        path.write_bytes(pickle.dumps([1, 2, 3]))
    elif how == "no-labels":
        path.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), dtype=np.uint8)}))
    elif how == "wrong-shape":
        path.write_bytes(pickle.dumps({b"data": np.zeros((2, 100), dtype=np.uint8), b"labels": [0, 1]}))


@pytest.mark.parametrize("how, why", [
    ("truncated", "truncated or damaged"), ("empty", "empty"), ("html", "web page"),
    ("not-a-record", "holds a list"), ("no-labels", "no labels entry"), ("wrong-shape", "3072"),
])
def test_damaged_cifar10_batch_names_the_file_and_the_fix(tmp_path, how, why):
    write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    _damage(path, how)
    with pytest.raises(DatasetCorruptError) as caught:
        load_dataset("cifar10", root=tmp_path)
    message = str(caught.value)
    assert str(path) in message and why in message
    assert "extract the archive again" in message and "cifar-10-python.tar.gz" in message
    assert isinstance(caught.value, DatasetNotFoundError)  # callers that catch the missing-data error see it too


@pytest.mark.parametrize("name", ["meta", "test"])
def test_damaged_cifar100_file_names_the_file(tmp_path, name):
    write_cifar100(tmp_path)
    path = tmp_path / "cifar-100-python" / name
    _damage(path, "html")
    with pytest.raises(DatasetCorruptError, match=rf"{path}.*web page.*extract the archive again"):
        load_dataset("cifar100", root=tmp_path)

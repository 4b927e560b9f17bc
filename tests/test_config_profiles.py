"""Tests for greenkd_utils.core.config (run configs and their keys) and the settings tree (greenkd_utils.settings):
the classification profiles and every notebook family's settings, all read by settings/ from configs/*.yaml."""

from __future__ import annotations

import dataclasses
import json

import pytest

from greenkd_utils.core.config import (
    AugmentSettings,
    RunConfig,
    TemperatureSpec,
    TrainSettings,
)
from greenkd_utils.settings.beyond import load_beyond_settings
from greenkd_utils.settings.data_free import load_dfkd_settings
from greenkd_utils.settings.detection import load_detection_profile
from greenkd_utils.settings.extra_tables import NOTEBOOKS as EXTRA_TABLE_NOTEBOOKS
from greenkd_utils.settings.extra_tables import load_settings, profile_overrides
from greenkd_utils.settings.knobs import PROFILES
from greenkd_utils.settings.notebooks import NOTEBOOK_FAMILIES, read_knobs
from greenkd_utils.settings.profiles import load_profile, overridable_knobs


@pytest.fixture
def kd_config(smoke):
    return smoke.kd_config("digits", seed=0, loss="hkd", temperature=TemperatureSpec.stochastic(2, 20))


# --------------------------------------------------------------------------- the run key


def test_key_is_stable(kd_config, smoke):
    again = smoke.kd_config("digits", seed=0, loss="hkd", temperature=TemperatureSpec.stochastic(2, 20))
    assert again is not kd_config and again.key == kd_config.key
    assert len(kd_config.key) == 16 and int(kd_config.key, 16) >= 0
    assert kd_config.key == kd_config.key and kd_config.replace().key == kd_config.key
    # Across processes (another hash seed): see test_store.test_two_processes_train_the_same_run_once,
    # whose spawned children rebuild the config from its dict and must find the same key.


def _numeric_paths(obj, prefix=()):
    """Every (path, value) of an int/float field inside nested frozen dataclasses (tuples included)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        path = prefix + (f.name,)
        if dataclasses.is_dataclass(value):
            yield from _numeric_paths(value, path)
        elif isinstance(value, bool):
            continue
        elif isinstance(value, (int, float)):
            yield path, value
        elif isinstance(value, tuple) and value and all(isinstance(v, int) for v in value):
            yield path, value


def _replace_path(obj, path, value):
    if len(path) == 1:
        return dataclasses.replace(obj, **{path[0]: value})
    return dataclasses.replace(obj, **{path[0]: _replace_path(getattr(obj, path[0]), path[1:], value)})


def _perturbed(value):
    if isinstance(value, tuple):
        return tuple(v + 1 for v in value)
    if isinstance(value, float):
        return value * 0.5 if value else 0.25
    return value + 1


def test_key_changes_when_any_numeric_field_changes(kd_config):
    config = kd_config.replace(train_subset=200, test_subset=100)
    paths = list(_numeric_paths(config))
    names = {".".join(p) for p, _ in paths}
    # Sanity: the walk reaches the nested settings, the temperature and the teacher.
    for expected in ("seed", "alpha", "val_fraction", "train_subset", "train.lr", "train.epochs",
                     "train.milestones", "train.augment.rotation_deg", "temperature.low",
                     "temperature.high", "teacher.seed", "teacher.train.weight_decay"):
        assert expected in names
    keys = {config.key}
    for path, value in paths:
        changed = _replace_path(config, path, _perturbed(value))
        assert changed.key != config.key, f"changing {'.'.join(path)} kept the key"
        keys.add(changed.key)
    assert len(keys) == len(paths) + 1  # every change gives its own key
    # The fixed temperature's tau too.
    fixed = config.replace(temperature=TemperatureSpec.fixed(4))
    assert fixed.key != config.replace(temperature=TemperatureSpec.fixed(5)).key


def test_key_ignores_int_versus_float_spelling(kd_config):
    # The same experiment written 4 or 4.0 is the same run: it must not be trained twice.
    assert kd_config.replace(temperature=TemperatureSpec(mode="fixed", tau=4)).key == kd_config.replace(
        temperature=TemperatureSpec.fixed(4.0)
    ).key
    assert kd_config.replace(alpha=1).key == kd_config.replace(alpha=1.0).key
    lr_int = dataclasses.replace(kd_config.train, lr=1)
    lr_float = dataclasses.replace(kd_config.train, lr=1.0)
    assert kd_config.replace(train=lr_int).key == kd_config.replace(train=lr_float).key


def test_round_trip_preserves_the_key(kd_config, smoke):
    for config in (kd_config, kd_config.teacher, smoke.student_config("digits", 1),
                   kd_config.replace(temperature=TemperatureSpec.fixed(7))):
        back = RunConfig.from_dict(config.to_dict())
        assert back == config and back.key == config.key
        # ... also through JSON, which is how the store keeps it (tuples become lists).
        via_json = RunConfig.from_dict(json.loads(json.dumps(config.to_dict())))
        assert via_json == config and via_json.key == config.key
        assert isinstance(via_json.train.milestones, tuple)
        assert isinstance(via_json.train.augment, AugmentSettings)


def test_run_config_validation(kd_config):
    with pytest.raises(ValueError, match="teacher, student, kd"):
        kd_config.replace(role="pupil")
    with pytest.raises(ValueError, match="cmc, cmc_softmax, cmc_sum, dml, hkd"):
        kd_config.replace(loss="fitnet")
    with pytest.raises(ValueError, match="val_fraction"):
        kd_config.replace(val_fraction=1.0)
    with pytest.raises(ValueError, match="batchmean, mean"):
        kd_config.replace(kl_reduction="sum")
    with pytest.raises(ValueError, match="cross-entropy"):
        kd_config.teacher.replace(loss="hkd")
    with pytest.raises(ValueError, match="epochs"):
        TrainSettings(epochs=0)


def test_temperature_seed_differs_from_the_model_seed(kd_config):
    assert kd_config.temperature_seed != kd_config.seed
    assert kd_config.replace(seed=1).temperature_seed != kd_config.temperature_seed


# --------------------------------------------------------------------------- profiles


def test_unknown_profile_names_the_valid_ones():
    with pytest.raises(ValueError, match="smoke, demo, paper"):
        load_profile("nope")


def test_unknown_override_names_the_valid_knobs():
    with pytest.raises(ValueError) as info:
        load_profile("smoke", epoch=3, bogus=1)
    message = str(info.value)
    assert "bogus" in message and "epoch" in message
    for knob in ("epochs", "teacher_epochs", "tau_grid", "seeds", "batch_size"):
        assert knob in message
    assert set(overridable_knobs()) >= {"epochs", "teacher_epochs", "tau_grid", "seeds", "lr"}


def test_none_overrides_are_skipped(smoke):
    assert load_profile("smoke", epochs=None, seeds=None) == smoke


@pytest.mark.parametrize("name", PROFILES)
def test_overriding_epochs_rescales_milestones(name):
    base = load_profile(name)
    fractions = base.student_train["milestone_fractions"]
    teacher_before = base.train_settings("teacher")
    for epochs in (10, 40, 100):
        settings = load_profile(name, epochs=epochs).train_settings("student")
        assert settings.epochs == epochs
        assert len(settings.milestones) == len(set(fractions))
        for m, f in zip(settings.milestones, sorted(fractions)):
            assert abs(m - f * epochs) <= 0.5 and 1 <= m <= epochs
    # The students' epochs leave the teacher alone (YAML anchors may share one dict).
    assert load_profile(name, epochs=37).train_settings("teacher") == teacher_before
    teacher = load_profile(name, teacher_epochs=50).train_settings("teacher")
    assert teacher.epochs == 50
    assert teacher.milestones == tuple(sorted({max(1, round(f * 50)) for f in
                                              base.teacher_train["milestone_fractions"]}))
    assert load_profile(name, teacher_epochs=50).train_settings("student") == base.train_settings("student")


def test_demo_profile_has_a_real_grid_and_seeds():
    demo = load_profile("demo")
    assert len(demo.tau_grid) >= 5 and len(set(demo.tau_grid)) == len(demo.tau_grid)
    assert len(demo.seeds) >= 2
    assert demo.device == "cpu" and demo.datasets == ("digits",)


def test_paper_profile_follows_the_protocol():
    paper = load_profile("paper")
    assert paper.tau_grid == tuple(float(t) for t in range(1, 21))
    assert paper.tau_range == (2.0, 20.0) and paper.alpha == 0.95 and paper.kl_reduction == "batchmean"
    settings = paper.train_settings("student")
    assert (settings.epochs, settings.batch_size, settings.lr) == (100, 128, 0.1)
    assert settings.milestones == (40, 60, 80) and settings.lr_decay == 0.2
    assert (settings.momentum, settings.weight_decay) == (0.9, 5e-4)


def test_profile_builds_one_shared_teacher(smoke):
    kd_a = smoke.kd_config("digits", 0, loss="hkd")
    kd_b = smoke.kd_config("digits", 0, loss="dml", temperature=TemperatureSpec.fixed(4))
    assert kd_a.teacher == kd_b.teacher == smoke.teacher_config("digits", 0)
    assert kd_a.teacher.key == smoke.teacher_config("digits", 0).key
    assert kd_a.temperature == TemperatureSpec.stochastic(*smoke.tau_range)
    assert kd_a.alpha == smoke.alpha and kd_a.profile == "smoke"
    assert smoke.student_config("digits", 0).role == "student"


def test_scalar_override_for_a_tuple_knob():
    assert load_profile("smoke", tau_grid=3).tau_grid == (3.0,)
    assert load_profile("smoke", seeds=[4, 5]).seeds == (4, 5)


# --------------------------------------------------------------------------- one settings tree


@pytest.mark.parametrize("name", PROFILES)
def test_settings_read_every_family_of_every_profile(name):
    profile = load_profile(name)
    detection = load_detection_profile(name)
    assert detection.name == name and detection.teacher_config().profile == name
    assert load_dfkd_settings(name).profile == name
    for notebook in EXTRA_TABLE_NOTEBOOKS:
        assert set(profile_overrides(name, notebook)) <= set(overridable_knobs())
        assert load_settings(profile, notebook).notebook == notebook
    assert load_beyond_settings(profile).tau_grid == profile.tau_grid
    for notebook, family in NOTEBOOK_FAMILIES.items():
        chosen = read_knobs(notebook, name)
        assert chosen.family == family and chosen.knobs["profile"] == name


def test_the_detection_profile_reports_with_the_classification_profiles_energy_constants():
    chosen = read_knobs("table4_detection", "demo", pue=1.2, carbon_intensity_g_per_kwh=100)
    assert (chosen.profile.pue, chosen.profile.carbon_intensity_g_per_kwh) == (1.2, 100.0)
    assert chosen.device == load_profile("demo").device


def test_knobs_reach_the_settings_they_belong_to():
    # Table 7's students' epochs are its own setting; its teachers stay the profile's (shared with Table 1).
    table7 = read_knobs("table7_teacher_student_pairs", "demo", epochs=2, teacher_epochs=3)
    assert table7.settings.epochs == 2
    assert table7.profile.student_train["epochs"] == load_profile("demo").student_train["epochs"]
    assert table7.profile.teacher_train["epochs"] == 3
    # The smoke profile's Table 7 shrinks the profile itself (configs/extra_tables.yaml, profile_overrides) ...
    assert read_knobs("table7_teacher_student_pairs", "smoke").profile.train_subset == 100
    # ... and a knob given by name wins over it.
    assert read_knobs("table7_teacher_student_pairs", "smoke", train_subset=120).profile.train_subset == 120
    # Beyond the paper: the seeds are the notebook's, the students' epochs the profile's.
    beyond = read_knobs("beyond_temperature_strategies", "demo", seeds=[7], epochs=3)
    assert beyond.settings.seeds == (7,) and beyond.profile.seeds == load_profile("demo").seeds
    assert beyond.profile.student_train["epochs"] == 3
    # The classification notebooks: seeds are the profile's, and the verdicts' too.
    table1 = read_knobs("table1_carbon_footprint", "demo", seeds=[0, 1])
    assert table1.profile.seeds == table1.profile.verdict_seeds == (0, 1) and table1.settings is None

"""Detection runs: configs and profiles, the run record, caching and resuming, the tuned sweep, and the
headline check that KD on generated shapes learns to detect."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from tiny_runs import interrupt_in_second_epoch

from greenkd_utils.core.config import TemperatureSpec
from greenkd_utils.core.detection.config import (
    DetectionRunConfig,
    DetectionTrainSettings,
)
from greenkd_utils.core.detection.evaluation import evaluate_model
from greenkd_utils.core.detection.models import AnchorSettings
from greenkd_utils.core.detection.shapes import ShapesSettings
from greenkd_utils.settings.detection import load_detection_profile
from greenkd_utils.runs.lifecycle import train as train_run
from greenkd_utils.runs.store import CHECKPOINT_FILE
from greenkd_utils.runs.sweep import tuned_sweep
from greenkd_utils.runs.tasks import detection as training
from greenkd_utils.runs.tasks.detection import (
    build_model,
    prepare_detection_data,
)

TINY_SHAPES = ShapesSettings(num_train=40, num_test=12, max_objects=2, min_size=0.3, max_size=0.65)
TINY_ANCHORS = AnchorSettings(num_feature_maps=3)


def _tiny(role: str = "teacher", epochs: int = 1, augment: str = "none", **changes) -> DetectionRunConfig:
    train = DetectionTrainSettings(epochs=epochs, batch_size=10, optimizer="sgd", lr=0.05, augment=augment)
    common = dict(dataset="shapes", image_size=32, anchors=TINY_ANCHORS, shapes=TINY_SHAPES, val_fraction=0.25, profile="test")
    teacher = DetectionRunConfig(role="teacher", model="vgg16_ssd", width=0.125, train=train, **common)
    if role == "teacher":
        return teacher.replace(**changes)
    if role == "student":
        return DetectionRunConfig(role="student", model="mobilenetv2_ssdlite", width=0.35, train=train, **common).replace(**changes)
    kd = DetectionRunConfig(
        role="kd", model="mobilenetv2_ssdlite", width=0.35, train=train, loss="hkd",
        temperature=TemperatureSpec.stochastic(), teacher=teacher, **common,
    )
    return kd.replace(**changes)


# -- configs and profiles -------------------------------------------------------------------------------
def test_config_key_is_stable_and_changes_with_what_changes_the_numbers():
    kd = _tiny("kd")
    assert kd.key == _tiny("kd").key
    assert DetectionRunConfig.from_dict(kd.to_dict()) == kd
    assert kd.replace(temperature=TemperatureSpec.fixed(4)).key != kd.key
    assert kd.replace(seed=1).key != kd.key
    assert kd.replace(width=0.5).key != kd.key
    other_images = dataclasses.replace(TINY_SHAPES, seed=1)
    assert kd.replace(shapes=other_images, teacher=kd.teacher.replace(shapes=other_images)).key != kd.key
    assert kd.replace(temperature=TemperatureSpec.fixed(4)).key == kd.replace(temperature=TemperatureSpec.fixed(4.0)).key
    assert kd.name.startswith("det_kd_shapes_vgg16_ssd-to-mobilenetv2_ssdlite_hkd")


def test_bad_configs_name_the_valid_choices():
    with pytest.raises(ValueError, match="teacher, student, kd"):
        _tiny().replace(role="coach")
    with pytest.raises(ValueError, match="shapes, voc"):
        _tiny().replace(dataset="coco", shapes=None)
    with pytest.raises(ValueError, match="vgg16_ssd, mobilenetv2_ssdlite"):
        _tiny().replace(model="yolo")
    with pytest.raises(ValueError, match="cmc, cmc_softmax, cmc_sum, dml, hkd"):
        _tiny("kd").replace(loss="ce")
    with pytest.raises(ValueError, match="none, flip, ssd"):
        DetectionTrainSettings(augment="mixup")
    with pytest.raises(ValueError, match="sgd, adam"):
        DetectionTrainSettings(optimizer="lamb")
    with pytest.raises(ValueError, match="grad_clip_norm"):
        DetectionTrainSettings(grad_clip_norm=0)
    with pytest.raises(ValueError, match="share the dataset, image size and anchors"):
        _tiny("kd").replace(image_size=48)


@pytest.mark.parametrize("name", ["smoke", "demo", "paper"])
def test_profiles_build_consistent_configs(name):
    profile = load_detection_profile(name)
    kd = profile.kd_config(profile.seeds[0], "cmc", TemperatureSpec.fixed(4))
    assert kd.teacher == profile.teacher_config()
    assert kd.teacher.seed == profile.teacher_seed  # one teacher for every student seed
    assert set(profile.losses) == {"hkd", "cmc", "dml"}
    assert profile.alpha == 0.95 and profile.tau_range == (2.0, 20.0)
    if name != "smoke":
        assert len(profile.tau_grid) >= 3


def test_paper_profile_is_the_papers_setting():
    p = load_detection_profile("paper")
    assert (p.dataset, p.image_size, p.anchors.num_feature_maps) == ("voc", 300, 6)
    assert p.student_train["epochs"] == 70 and p.student_train["batch_size"] == 32
    assert p.teacher_width == p.student_width == 1.0
    assert p.tau_grid == tuple(float(t) for t in range(1, 21)) and len(p.seeds) == 5


def test_profile_overrides_apply_and_unknown_ones_raise():
    p = load_detection_profile("demo", seeds=[0, 1], epochs=3, teacher_epochs=2, tau_grid=[2, 8])
    assert p.seeds == (0, 1) and p.tau_grid == (2.0, 8.0)
    assert p.train_settings("student").epochs == 3 and p.train_settings("teacher").epochs == 2
    assert load_detection_profile("demo", epochs=None) == load_detection_profile("demo")
    with pytest.raises(ValueError, match="valid: seeds"):
        load_detection_profile("demo", temperature=3)
    with pytest.raises(ValueError, match="smoke, demo, paper"):
        load_detection_profile("huge")


# -- runs --------------------------------------------------------------------------------------------------
def test_a_kd_run_records_its_flops_energy_and_taus_and_is_cached(store):
    config = _tiny("kd", epochs=2)
    result = train_run(config, store, "cpu", progress=False)
    assert store.is_finished(config) and store.is_finished(config.teacher)
    assert len(result.history) == 2 and result.history[-1]["epoch"] == 2
    assert 0.0 <= result.extras["test_map_pct"] <= 100.0 and not math.isnan(result.extras["val_map_pct"])
    assert result.test_accuracy == result.extras["test_map_pct"]  # the name the shared table code reads
    flops = result.flops
    n_train = result.data["n_train"]
    assert n_train == 30 and result.data["n_val"] == 10
    # Without augmentation the teacher ran once per training image; the student twice over 3 batches of 10.
    assert flops["teacher_forwards"] == n_train
    assert flops["samples_seen"] == 2 * 30
    per = flops["per_sample"]
    assert per["teacher_forward"] > per["student_forward"] > 0
    assert flops["training_flops"] == pytest.approx(
        (per["student_forward"] + per["student_backward"]) * 60 + per["teacher_forward"] * n_train
    )
    assert result.tau["mode"] == "stochastic" and result.tau["count"] == 2 * 3
    assert 2.0 <= result.tau["min"] <= result.tau["max"] <= 20.0
    assert result.energy.energy_kwh > 0 and result.energy.source in {"measured", "estimated", "partly estimated"}
    again = train_run(config, store, "cpu", progress=False)
    assert again.finished_at == result.finished_at  # loaded, not retrained
    model = again.load_model(store)
    assert not model.training and model.num_classes == 3


@pytest.mark.parametrize("augment", ["flip", "ssd"])
def test_augmented_runs_run_the_teacher_on_every_batch(store, augment):
    config = _tiny("kd", augment=augment, temperature=TemperatureSpec.fixed(3.0))
    result = train_run(config, store, "cpu", progress=False)
    assert result.flops["teacher_forwards"] == result.flops["samples_seen"] == 30
    assert result.tau == {"mode": "fixed", "tau": 3.0}


def test_an_interrupted_run_resumes_to_the_same_weights(store, monkeypatch):
    config = _tiny("student", epochs=2)
    reference = train_run(config, store, "cpu", progress=False)
    weights = store.load_state_dict(config)

    resumed_config = config.replace(profile="test-resume")  # a new key, same numbers
    interrupt_in_second_epoch(training.DetectionTask, resumed_config, store, monkeypatch)
    assert (store.run_dir(resumed_config) / CHECKPOINT_FILE).is_file()
    resumed = train_run(resumed_config, store, "cpu", progress=False)
    for name, value in store.load_state_dict(resumed_config).items():
        assert torch.allclose(value.float(), weights[name].float(), atol=1e-6), name
    assert [h["train_loss"] for h in resumed.history] == pytest.approx([h["train_loss"] for h in reference.history])
    assert not (store.run_dir(resumed_config) / CHECKPOINT_FILE).exists()


def test_the_tuned_sweep_sums_the_grid_and_chooses_on_validation(store):
    sweep = tuned_sweep(_tiny("kd"), [2, 8], store, "cpu", progress=False)
    assert sweep.taus == [2.0, 8.0]
    assert sweep.chosen.extras["val_map_pct"] == max(r.extras["val_map_pct"] for r in sweep.runs)
    assert sweep.training_flops == pytest.approx(sum(r.training_flops for r in sweep.runs))
    assert sweep.energy.energy_kwh == pytest.approx(sum(r.energy.energy_kwh for r in sweep.runs))
    with pytest.raises(ValueError, match="validation"):
        tuned_sweep(_tiny("kd", val_fraction=0.0), [2], store, "cpu", progress=False)


# -- the headline: KD on shapes learns to detect ------------------------------------------------------------
HEADLINE_SHAPES = ShapesSettings(num_train=300, num_test=100, max_objects=2, min_size=0.3, max_size=0.65)
HEADLINE_ANCHORS = AnchorSettings(num_feature_maps=4)


def headline_configs(seed: int = 0):
    """The demo's setting, pinned here (so the bar does not move with the profile): a quarter-width
    VGG16-SSD teacher and a half-width MobileNetV2-SSDLite student at 48x48, under a minute on one core."""
    common = dict(dataset="shapes", image_size=48, anchors=HEADLINE_ANCHORS, shapes=HEADLINE_SHAPES, val_fraction=0.2,
                  profile="test", seed=seed)
    teacher = DetectionRunConfig(
        role="teacher", model="vgg16_ssd", width=0.25, **common,
        train=DetectionTrainSettings(epochs=12, batch_size=32, optimizer="adam", lr=2e-3, weight_decay=0.0,
                                     milestones=(9,), augment="flip"),
    )
    kd = DetectionRunConfig(
        role="kd", model="mobilenetv2_ssdlite", width=0.5, loss="hkd", temperature=TemperatureSpec.stochastic(),
        teacher=teacher, **common,
        train=DetectionTrainSettings(epochs=12, batch_size=32, optimizer="sgd", lr=0.1, milestones=(9,), grad_clip_norm=5.0),
    )
    return teacher, kd


def test_kd_on_shapes_detects_far_better_than_an_untrained_student(store):
    """Seed 0 of :func:`headline_configs`. Measured spread (benchmarks/test_threshold_spread.py --only
    detection; 1 thread, torch 2.14.1): over four seeds with AVX2 kernels this student reached 44-59% mAP, and
    seeds 0-1 with ATEN_CPU_CAPABILITY=default gave a teacher of 60.3-68.9% and a student of 46.7-47.4%, its
    last training loss 0.18-0.20 of its first; an untrained one stays under 1%. The bars (40, 25, 0.6) sit
    below all of them by at least the spread's width."""
    teacher, kd = headline_configs()
    result = train_run(kd, store, "cpu", progress=False)
    teacher_result = train_run(teacher, store, "cpu", progress=False)

    data = prepare_detection_data(kd)
    torch.manual_seed(0)
    untrained = evaluate_model(build_model(kd, data.num_classes).eval(), data.test, data.mean, data.std)
    assert untrained.map_pct < 2.0
    assert teacher_result.extras["test_map_pct"] > 40.0
    assert result.extras["test_map_pct"] > 25.0
    assert result.history[-1]["train_loss"] < 0.6 * result.history[0]["train_loss"]

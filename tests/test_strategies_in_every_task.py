"""Every temperature strategy works in every kind of KD run: per-sample taus, CTKD's learned tau and logit
standardization in data-free KD and in detection, as in classification (the lifecycle draws tau for all)."""

from __future__ import annotations

import pytest
import torch
from tiny_runs import tiny_data_free, tiny_detection

from greenkd_utils.core.config import TemperatureSpec
from greenkd_utils.core.detection.config import DetectionRunConfig
from greenkd_utils.core import losses
from greenkd_utils.core.detection import loss as detection_loss
from greenkd_utils.core.detection.loss import anchor_distillation
from greenkd_utils.core.dfkd.config import DFKDConfig
from greenkd_utils.core.losses import KD_LOSSES
from greenkd_utils.paper import table6_dfkd
from greenkd_utils.paper.experiments import setup
from greenkd_utils.runs.store import RunStore
from greenkd_utils.runs.lifecycle import train as train_run

STRATEGIES = {
    "per_sample": dict(temperature=TemperatureSpec.stochastic_per_sample(2, 20)),
    "ctkd": dict(temperature=TemperatureSpec.ctkd(curriculum_epochs=2)),
    "logit_standardization": dict(temperature=TemperatureSpec.stochastic(2, 20), logit_standardization=True),
}


def _dfkd(**changes) -> DFKDConfig:
    return tiny_data_free().replace(**changes)


def _detection(**changes) -> DetectionRunConfig:
    return tiny_detection().replace(**changes)


def _check(result, config, taus_per_epoch: int):
    assert torch.isfinite(torch.tensor(result.test_accuracy))
    mode = config.temperature.mode
    assert result.tau["mode"] == mode
    if mode == "stochastic_per_sample":
        assert result.tau["count"] == config.train.epochs * taus_per_epoch
        assert 2 <= result.tau["min"] < result.tau["max"] <= 20
    if mode == "ctkd":
        assert [h["ctkd_lambda"] for h in result.history] == pytest.approx([0.5, 1.0])
        assert all(1.0 <= h["tau_mean"] <= 21.0 for h in result.history)
    assert result.config.logit_standardization == config.logit_standardization


@pytest.fixture
def standardized(monkeypatch):
    """Every call of logit standardization made while training, with the logits it z-scored, from whichever
    loss module made it (classification's and data-free KD's losses, the detector's anchor distillation)."""
    calls = []

    def spy(real):
        def standardize(logits, *args, **kwargs):
            calls.append(logits.detach().clone())
            return real(logits, *args, **kwargs)
        return standardize

    for module in (losses, detection_loss):
        monkeypatch.setattr(module, "standardize_logits", spy(module.standardize_logits))
    return calls


def _check_standardization(calls, config, steps: int, classes: int):
    """With logit standardization, the student's and the teacher's logits of every step were z-scored: two
    calls per step on logits of the run's classes; without it, none."""
    if not config.logit_standardization:
        assert calls == []
        return
    assert len(calls) == 2 * steps
    assert all(c.shape[-1] == classes for c in calls)
    # What the loss then compared is standardized: zero mean and unit spread per sample (or anchor).
    z = losses.standardize_logits(calls[-1].reshape(-1, classes))
    assert z.mean(dim=-1).abs().max() < 1e-4 and (z.std(dim=-1) - 1).abs().max() < 1e-2


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_data_free_kd_takes_every_strategy(strategy, tmp_path, standardized):
    config = _dfkd(**STRATEGIES[strategy])
    result = train_run(config, RunStore(tmp_path), "cpu", progress=False)
    _check(result, config, taus_per_epoch=config.kd_steps * config.train.batch_size)
    _check_standardization(standardized, config, steps=config.train.epochs * config.kd_steps, classes=10)


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_detection_takes_every_strategy(strategy, tmp_path, standardized):
    config = _detection(**STRATEGIES[strategy])
    result = train_run(config, RunStore(tmp_path), "cpu", progress=False)
    _check(result, config, taus_per_epoch=(30 // 10) * 10)  # 30 training images, batches of 10
    # 3 steps per epoch (30 training images, batches of 10); the shapes have 3 classes plus background.
    _check_standardization(standardized, config, steps=config.train.epochs * 3, classes=4)


def test_a_per_image_tau_is_every_anchor_of_that_image(tmp_path):
    gen = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 5, 4, generator=gen), torch.randn(2, 5, 4, generator=gen)
    used = torch.tensor([[1, 1, 0, 0, 1], [0, 1, 1, 0, 0]], dtype=torch.bool)
    taus = torch.tensor([2.0, 7.0])
    by_image = anchor_distillation("hkd", student, teacher, used, taus)
    per_anchor = torch.tensor([2.0, 2.0, 2.0, 7.0, 7.0])  # the used anchors, image by image
    expected = KD_LOSSES["hkd"](student[used], teacher[used], per_anchor, "batchmean")
    assert float(by_image) == pytest.approx(float(expected), rel=1e-6)
    # Logit standardization: adding a constant to, or scaling, an anchor's logits changes nothing.
    ls = anchor_distillation("hkd", student, teacher, used, 3.0, logit_standardization=True)
    shifted = anchor_distillation("hkd", 2.5 * student + 4.0, teacher - 1.0, used, 3.0, logit_standardization=True)
    assert float(ls) == pytest.approx(float(shifted), rel=1e-5)
    with pytest.raises(ValueError, match="hkd"):
        anchor_distillation("cmc", student, teacher, used, 3.0, logit_standardization=True)


def test_the_data_free_and_detection_notebooks_pass_the_strategy_knobs_on(tmp_path):
    exp = setup("smoke", notebook="table6_dfkd", results_dir=tmp_path, progress=False,
                temperature_mode="stochastic_per_sample", logit_standardization="true")
    config = table6_dfkd.dfkd_config(exp, "deepinversion", "digits", 0, exp.profile.stochastic())
    assert config.temperature.mode == "stochastic_per_sample" and config.logit_standardization
    det = setup("smoke", notebook="table4_detection", results_dir=tmp_path, progress=False, temperature_mode="ctkd",
                logit_standardization=True)
    kd = det.profile.kd_config(0, "hkd")
    assert kd.temperature.mode == "ctkd" and kd.logit_standardization
    with pytest.raises(ValueError, match="temperature_mode"):
        setup("smoke", notebook="table4_detection", results_dir=tmp_path, progress=False, temperature_mode="hot")

"""Temperature strategies beyond the paper: per-sample stochastic tau, CTKD, logit standardization and
successive halving, tested against independent computations (numpy loops, hand-derived gradients), plus the
run keys that must not move when options are added to the configs."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import shutil

import numpy as np
import pytest
import torch
from scipy import stats

from greenkd_utils.core.config import (
    RunConfig,
    TemperatureSpec,
    TrainSettings,
    config_key,
)
from greenkd_utils.core.losses import kd_loss, standardize_logits
from greenkd_utils.core.temperature import (
    CurriculumTemperature,
    StochasticPerSampleTemperature,
    cosine_curriculum,
    make_temperature,
)
from greenkd_utils.energy.report import ComponentEnergy, EnergyReport
from greenkd_utils.runs import lifecycle, successive_halving
from greenkd_utils.runs.store import CHECKPOINT_FILE, RunStore
from greenkd_utils.runs.successive_halving import (
    RESUME_STATE_FILE,
    HalvingResult,
    HalvingSettings,
    successive_halving_sweep,
    truncated,
)
from greenkd_utils.runs.sweep import tuned_sweep
from greenkd_utils.runs.tasks import classification as engine
from greenkd_utils.runs.device_data import steps_per_epoch
from greenkd_utils.runs.execution import lr_factor
from greenkd_utils.runs.lifecycle import train as train_run
from greenkd_utils.runs.record import RunResult
from greenkd_utils.settings.profiles import load_profile

ALPHA = 0.95


# --------------------------------------------------------------------------- run keys must not move

# Computed with the code as it was before logit standardization, CTKD and per-sample taus were added, from
# the profile files as they are. A deliberate change to a profile file changes its keys (its runs are
# retrained): recompute that profile's keys then; a change to the config code must never change them.
GOLDEN_PROFILE_KEYS = {
    ("demo", "kd_hkd_stochastic"): "102c44a6926ba14d",
    ("demo", "teacher"): "504971ce0be2ee9b",
    ("demo", "student"): "b8490f1a1baa2aa2",
    ("demo", "kd_dml_fixed4_s1"): "771eb887dfc3e9df",
    ("smoke", "kd_hkd_stochastic"): "fefee2bf9590da83",
    ("smoke", "teacher"): "1823eda62017a02a",
    ("smoke", "student"): "22d00326af17ee55",
    ("smoke", "kd_dml_fixed4_s1"): "95f39109f55f3a2a",
    ("paper", "kd_hkd_stochastic"): "572258c786529166",
    ("paper", "teacher"): "2ed985271fd325ea",
    ("paper", "student"): "a223a9698667c79f",
    ("paper", "kd_dml_fixed4_s1"): "1e83fd8f85fd4f11",
}


def _profile_config(profile: str, which: str) -> RunConfig:
    prof = load_profile(profile)
    dataset = prof.datasets[0]
    return {
        "kd_hkd_stochastic": lambda: prof.kd_config(dataset, 0, "hkd"),
        "teacher": lambda: prof.teacher_config(dataset, 0),
        "student": lambda: prof.student_config(dataset, 0),
        "kd_dml_fixed4_s1": lambda: prof.kd_config(dataset, 1, "dml", TemperatureSpec.fixed(4)),
    }[which]()


@pytest.mark.parametrize("profile, which", sorted(GOLDEN_PROFILE_KEYS))
def test_profile_run_keys_are_unchanged(profile, which):
    assert _profile_config(profile, which).key == GOLDEN_PROFILE_KEYS[(profile, which)]


def _explicit_configs():
    teacher = RunConfig(role="teacher", dataset="cifar10", model="resnet18", seed=3)
    student = RunConfig(role="student", dataset="cifar100", model="mobilenetv2", seed=1,
                        train=TrainSettings(epochs=5, batch_size=64))
    kd_fixed = RunConfig(role="kd", dataset="cifar10", model="mobilenetv2", seed=3, loss="hkd",
                         temperature=TemperatureSpec.fixed(4), teacher=teacher)
    kd_stochastic = RunConfig(role="kd", dataset="cifar10", model="mobilenetv2", seed=0, loss="dml",
                              temperature=TemperatureSpec.stochastic(2, 20), teacher=teacher, kl_reduction="mean")
    return teacher, student, kd_fixed, kd_stochastic


def test_explicit_and_nested_run_keys_are_unchanged():
    # Independent of the profile YAML files; data-free KD, QAT and detection configs nest these specs and
    # run configs through dataclasses.asdict, so their keys are checked too.
    from greenkd_utils.core.detection.config import DetectionRunConfig
    from greenkd_utils.core.dfkd.config import DFKDConfig, SynthesisSettings
    from greenkd_utils.core.quantization import QATConfig

    teacher, student, kd_fixed, kd_stochastic = _explicit_configs()
    assert [c.key for c in (teacher, student, kd_fixed, kd_stochastic)] == [
        "985233ab8a01303c", "dabc6438f41a385d", "e2cb6ab3b9202ca8", "205d04e8f2eaeb74"]
    dfkd = [DFKDConfig(dataset="cifar10", model="wrn16_1", teacher=teacher, synthesis=SynthesisSettings(method=m),
                       temperature=TemperatureSpec.fixed(4)).key for m in ("deepinversion", "cmi")]
    assert dfkd == ["a6f13e08810e0639", "9c66961f20cad197"]
    assert QATConfig.from_student(student, init="student", backend="fbgemm").key == "f2221e6cdb4f8fd6"
    det_teacher = DetectionRunConfig(role="teacher", dataset="shapes", model="vgg16_ssd")
    det_kd = DetectionRunConfig(role="kd", dataset="shapes", model="mobilenetv2_ssdlite", loss="hkd",
                                temperature=TemperatureSpec.stochastic(), teacher=det_teacher)
    assert (det_teacher.key, det_kd.key) == ("7145788e5b8e9b62", "cb43960633ce4904")


@pytest.mark.parametrize("profile", ["smoke", "demo", "paper"])
def test_key_is_the_hash_of_the_fields_that_existed_before(profile):
    # Whatever the profile files say: at their defaults the new options add nothing to the hashed form.
    prof = load_profile(profile)
    config = prof.kd_config(prof.datasets[0], 0, "hkd")
    d = json.loads(json.dumps(config.to_dict()))
    before = {k: v for k, v in d.items() if k != "logit_standardization"}
    before["temperature"] = {k: d["temperature"][k] for k in ("mode", "tau", "low", "high")}
    before["teacher"] = {k: v for k, v in d["teacher"].items() if k != "logit_standardization"}
    # ... also in the raw form, as the configs that nest a RunConfig hash it.
    assert config.key == config_key(before) == config_key(dataclasses.asdict(config))


def test_new_options_are_left_out_at_their_default_and_change_the_key_otherwise():
    _, _, kd_fixed, _ = _explicit_configs()
    d = kd_fixed.to_dict()
    assert "logit_standardization" not in d and "logit_standardization" not in d["teacher"]
    assert "curriculum_epochs" not in d["temperature"]
    standardized = kd_fixed.replace(logit_standardization=True)
    assert standardized.to_dict()["logit_standardization"] is True
    ctkd = kd_fixed.replace(temperature=TemperatureSpec.ctkd())
    per_sample = kd_fixed.replace(temperature=TemperatureSpec.stochastic_per_sample())
    keys = {kd_fixed.key, standardized.key, ctkd.key, per_sample.key,
            ctkd.replace(temperature=TemperatureSpec.ctkd(curriculum_epochs=5)).key}
    assert len(keys) == 5
    # Round trips through the stored form, and the readable names keep folders apart.
    for config in (standardized, ctkd, per_sample):
        again = RunConfig.from_dict(json.loads(json.dumps(config.to_dict())))
        assert again == config and again.key == config.key
    assert standardized.name.endswith("_ls_s3") and "/" not in per_sample.name


def test_records_written_before_the_new_options_still_load(store, smoke):
    # A result.json of an earlier version: its config has neither option. It must load with both at their
    # default, keep its key, and be found by the store.
    config = smoke.kd_config("digits", 0, "hkd", TemperatureSpec.fixed(4))
    old_config = json.loads(json.dumps(config.to_dict()))
    old_config["temperature"].pop("curriculum_epochs", None)
    record = {
        "key": config.key, "name": config.name, "config": old_config, "test_accuracy": 50.0, "val_accuracy": 40.0,
        "energy": EnergyReport(duration_s=1.0, components={"cpu": ComponentEnergy("cpu", 1e-6, "estimated", "m")}
                               ).to_dict(),
        "flops": {"training_flops": 1.0}, "wall_time_s": 1.0, "tau": {"mode": "fixed", "tau": 4.0},
        "history": [], "data": {}, "versions": {}, "device": "cpu", "finished_at": "",
    }
    run_dir = store.run_dir(config)
    run_dir.mkdir(parents=True)
    (run_dir / "result.json").write_text(json.dumps(record))
    torch.save({"w": torch.zeros(1)}, run_dir / "model.pt")  # a finished run always kept its weights
    loaded = RunResult.from_dict(store.load_result(config))
    assert loaded.config == config and loaded.config.logit_standardization is False
    assert loaded.config.temperature.curriculum_epochs is None and loaded.config.key == config.key


# --------------------------------------------------------------------------- logit standardization


def _zscore_reference(row: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    mean = sum(row) / len(row)
    std = math.sqrt(sum((v - mean) ** 2 for v in row) / (len(row) - 1))  # the sample standard deviation
    return np.array([(v - mean) / (std + eps) for v in row])


@pytest.fixture
def logits():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(5, 7, generator=g, dtype=torch.float64) * 3 + 1
    t = torch.randn(5, 7, generator=g, dtype=torch.float64) * 6 - 2
    y = torch.randint(0, 7, (5,), generator=g)
    return s, t, y


def test_standardized_logits_match_a_hand_z_score(logits):
    s, _, _ = logits
    got = standardize_logits(s).numpy()
    for i in range(s.shape[0]):
        np.testing.assert_allclose(got[i], _zscore_reference(s[i].numpy()), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shift, scale", [(5.0, 1.0), (-40.0, 1.0), (0.0, 3.5), (12.0, 0.2)])
def test_standardization_ignores_a_shift_and_a_positive_scale_per_sample(logits, shift, scale):
    s, t, y = logits
    # A different shift and scale for every sample: the z-scores, and so the distillation term, do not move.
    shifts = shift * torch.arange(1, 6, dtype=torch.float64).reshape(-1, 1)
    scales = scale * torch.linspace(0.5, 2.0, 5, dtype=torch.float64).reshape(-1, 1)
    torch.testing.assert_close(standardize_logits(s * scales + shifts), standardize_logits(s), rtol=1e-6, atol=1e-6)
    for name in ("hkd", "dml"):
        base = kd_loss(name, s, t, y, tau=2.0, alpha=1.0, logit_standardization=True)
        moved_teacher = kd_loss(name, s, t * scales + shifts, y, tau=2.0, alpha=1.0, logit_standardization=True)
        moved_student = kd_loss(name, s * scales + shifts, t, y, tau=2.0, alpha=1.0, logit_standardization=True)
        assert float(moved_teacher) == pytest.approx(float(base), rel=1e-6)
        assert float(moved_student) == pytest.approx(float(base), rel=1e-6)
        # Without standardization the same moves change the loss.
        plain = kd_loss(name, s, t, y, tau=2.0, alpha=1.0)
        assert float(kd_loss(name, s, t * scales + shifts, y, tau=2.0, alpha=1.0)) != pytest.approx(float(plain))


def test_standardized_hkd_matches_the_reference_and_keeps_raw_logits_for_cross_entropy(logits):
    s, t, y = logits
    tau = 3.0
    zs = np.stack([_zscore_reference(r) for r in s.numpy()])
    zt = np.stack([_zscore_reference(r) for r in t.numpy()])

    def softmax(row):
        e = np.exp(row - row.max())
        return e / e.sum()

    kl = np.mean([np.sum(softmax(zt[i] / tau) * (np.log(softmax(zt[i] / tau)) - np.log(softmax(zs[i] / tau))))
                  for i in range(len(zs))])
    ce = float(torch.nn.functional.cross_entropy(s, y))  # on the raw student logits
    got = kd_loss("hkd", s, t, y, tau=tau, alpha=ALPHA, logit_standardization=True)
    assert float(got) == pytest.approx(ALPHA * tau**2 * kl + (1 - ALPHA) * ce, rel=1e-9)
    # alpha = 0 leaves only cross-entropy, untouched by the standardization.
    assert float(kd_loss("hkd", s, t, y, tau=tau, alpha=0.0, logit_standardization=True)) == pytest.approx(ce)


def test_logit_standardization_of_cmc_is_a_clear_error(logits, smoke):
    s, t, y = logits
    with pytest.raises(ValueError, match="'cmc'.*valid: dml, hkd"):
        kd_loss("cmc", s, t, y, tau=2.0, logit_standardization=True)
    with pytest.raises(ValueError, match="valid: dml, hkd"):
        smoke.kd_config("digits", 0, "cmc").replace(logit_standardization=True)
    with pytest.raises(ValueError, match="KD runs only"):
        smoke.teacher_config("digits", 0).replace(logit_standardization=True)


# --------------------------------------------------------------------------- stochastic tau per sample


def test_per_sample_taus_are_iid_uniform_with_the_right_shape():
    temp = make_temperature("stochastic_per_sample", low=2, high=20, seed=3)
    assert isinstance(temp, StochasticPerSampleTemperature) and temp.per_sample
    draws = temp.sample_many(400, 64)
    assert draws.shape == (400, 64)
    assert draws.min() >= 2.0 and draws.max() <= 20.0
    flat = draws.reshape(-1)
    # Uniform on [2, 20]: a Kolmogorov-Smirnov test, and mean and variance (18^2 / 12) within a few standard errors.
    assert stats.kstest(flat, stats.uniform(loc=2, scale=18).cdf).pvalue > 0.01
    assert flat.mean() == pytest.approx(11.0, abs=4 * (18 / math.sqrt(12)) / math.sqrt(flat.size))
    assert flat.var() == pytest.approx(27.0, rel=0.02)
    # Independent: samples of a batch, and consecutive batches, are uncorrelated.
    assert abs(np.corrcoef(draws[:, 0], draws[:, 1])[0, 1]) < 0.15
    assert abs(np.corrcoef(flat[:-1], flat[1:])[0, 1]) < 0.02
    # Not one value per batch: the samples of a batch differ.
    assert (draws.std(axis=1) > 1.0).all()


def test_per_sample_taus_are_reproducible_from_the_seed_and_resume():
    a = make_temperature("stochastic_per_sample", low=2, high=20, seed=7)
    b = make_temperature("stochastic_per_sample", low=2, high=20, seed=7)
    c = make_temperature("stochastic_per_sample", low=2, high=20, seed=8)
    first = a.sample_many(3, 5)
    np.testing.assert_array_equal(first, b.sample_many(3, 5))
    assert not np.array_equal(first, c.sample_many(3, 5))
    buffer = io.BytesIO()
    torch.save({"temperature": a.state_dict()}, buffer)
    buffer.seek(0)
    resumed = make_temperature("stochastic_per_sample", low=2, high=20, seed=0)
    resumed.load_state_dict(torch.load(buffer, weights_only=True)["temperature"])
    np.testing.assert_array_equal(resumed.sample_many(2, 5), a.sample_many(2, 5))
    with pytest.raises(ValueError, match="batch size"):
        a.sample_many(3)


def test_per_sample_taus_reach_the_loss_one_per_sample(smoke, store):
    epoch = make_temperature("stochastic_per_sample", low=2, high=20, seed=1).for_epoch(0, 4, 8, "cpu")
    assert epoch[2].shape == (8,) and epoch[2].dtype == torch.float32
    np.testing.assert_allclose(epoch[2].numpy(), epoch.values()[2], rtol=1e-6)
    config = smoke.kd_config("digits", 0, "hkd", TemperatureSpec.stochastic_per_sample())
    run = train_run(config, store, device="cpu", progress=False)
    steps = steps_per_epoch(run.data["n_train"], config.train.batch_size)
    assert run.tau["mode"] == "stochastic_per_sample"
    assert run.tau["count"] == config.train.epochs * steps * config.train.batch_size
    assert all(2.0 <= h["tau_min"] < h["tau_max"] <= 20.0 for h in run.history)


# --------------------------------------------------------------------------- CTKD


def test_ctkd_tau_stays_inside_its_range():
    temp = make_temperature("ctkd")
    assert (temp.low, temp.high, temp.curriculum_epochs) == (1.0, 21.0, 10)
    assert temp.current_tau() == pytest.approx(1 + 20 / (1 + math.exp(-1)))  # p starts at 1, as in CTKD
    for p in (-1e4, -30.0, -3.0, 0.0, 2.5, 30.0, 1e4):
        with torch.no_grad():
            temp.param.fill_(p)
        tau = float(temp.tau(1.0).detach())
        assert 1.0 <= tau <= 21.0
    narrow = CurriculumTemperature(low=2.0, high=5.0)
    assert 2.0 <= float(narrow.tau(0.5).detach()) <= 5.0


def test_cosine_curriculum_matches_the_paper():
    # lambda_e = (1 - cos(pi * min(e, 10) / 10)) / 2: 0 before training, 1 from epoch 10 on.
    for e in range(0, 15):
        want = (1 - math.cos(math.pi * min(e, 10) / 10)) / 2
        assert cosine_curriculum(e, 10) == pytest.approx(want, abs=1e-15)
    assert cosine_curriculum(5, 10) == pytest.approx(0.5)
    temp = CurriculumTemperature(curriculum_epochs=4)
    assert [temp.strength(i) for i in range(6)] == pytest.approx([(1 - math.cos(math.pi * min(i + 1, 4) / 4)) / 2
                                                                  for i in range(6)])


def _reference_hkd(s: np.ndarray, t: np.ndarray, y: np.ndarray, tau: float) -> float:
    def log_softmax(row):
        m = row.max()
        return row - m - math.log(sum(math.exp(v - m) for v in row))

    kl = ce = 0.0
    for i in range(len(s)):
        lt, ls = log_softmax(t[i] / tau), log_softmax(s[i] / tau)
        kl += sum(math.exp(lt[c]) * (lt[c] - ls[c]) for c in range(s.shape[1]))
        ce -= log_softmax(s[i])[y[i]]
    return ALPHA * tau**2 * kl / len(s) + (1 - ALPHA) * ce / len(s)


def test_one_step_moves_tau_up_the_loss_by_lr_lambda_and_the_gradient(logits):
    s, t, y = logits
    temp = make_temperature("ctkd")
    epoch_index = 2  # the third epoch: lambda = (1 - cos(0.3 pi)) / 2
    lam = temp.strength(epoch_index)
    assert lam == pytest.approx((1 - math.cos(0.3 * math.pi)) / 2)
    lr = 0.5
    optimizer = torch.optim.SGD(temp.parameters(), lr=lr)
    epoch = temp.for_epoch(epoch_index, n_steps=1, batch_size=len(y), device="cpu")
    p0 = float(temp.param.detach())
    tau = epoch[0]
    tau0 = float(tau.detach())
    kd_loss("hkd", s, t, y, tau, alpha=ALPHA).backward()
    optimizer.step()
    assert epoch.values() == pytest.approx([tau0]) and epoch.record() == {"ctkd_lambda": lam}

    # By hand: dL/dtau by a central difference of the numpy reference, times dtau/dp = 20 sigma (1 - sigma).
    s_np, t_np, y_np = s.numpy(), t.numpy(), y.numpy()
    h = 1e-5
    dl_dtau = (_reference_hkd(s_np, t_np, y_np, tau0 + h) - _reference_hkd(s_np, t_np, y_np, tau0 - h)) / (2 * h)
    sigma = 1 / (1 + math.exp(-p0))
    dl_dp = dl_dtau * 20 * sigma * (1 - sigma)
    # The reversed gradient: SGD steps *along* dL/dp, scaled by lambda.
    assert float(temp.param.detach()) - p0 == pytest.approx(lr * lam * dl_dp, rel=1e-4)
    tau1 = temp.current_tau()
    assert np.sign(tau1 - tau0) == np.sign(dl_dtau) != 0
    assert _reference_hkd(s_np, t_np, y_np, tau1) > _reference_hkd(s_np, t_np, y_np, tau0)


def test_ctkd_cannot_be_drawn_in_advance():
    with pytest.raises(TypeError, match="learned during training"):
        make_temperature("ctkd").sample_many(4)
    with pytest.raises(ValueError, match="curriculum_epochs applies to the ctkd temperature only"):
        TemperatureSpec(mode="stochastic", curriculum_epochs=3)
    with pytest.raises(ValueError, match="curriculum_epochs >= 1"):
        TemperatureSpec.ctkd(curriculum_epochs=0)
    with pytest.raises(ValueError, match="fixed, stochastic, stochastic_per_sample, ctkd"):
        make_temperature("annealed")


def test_ctkd_run_resumes_exactly_and_records_tau_per_epoch(tmp_path, monkeypatch):
    # Two epochs with a 2-epoch curriculum (lambda 0.5 then 1) and a high lr so tau visibly moves.
    config = load_profile("smoke").kd_config(
        "digits", seed=0, loss="hkd", temperature=TemperatureSpec.ctkd(curriculum_epochs=2), epochs=2, lr=0.5,
    )
    store_a = RunStore(tmp_path / "a")
    straight = train_run(config, store_a, device="cpu", progress=False)
    assert straight.tau["mode"] == "ctkd" and 1.0 <= straight.tau["min"] <= straight.tau["max"] <= 21.0
    assert [h["ctkd_lambda"] for h in straight.history] == pytest.approx([0.5, 1.0])
    assert straight.tau["min"] < straight.tau["max"]  # tau was trained, not frozen

    store_b = RunStore(tmp_path / "b")
    shutil.copytree(store_a.run_dir(config.teacher), store_b.run_dir(config.teacher))
    run_dir = store_b.run_dir(config)
    real_objective = engine.objective

    def interrupting(*args, **kwargs):
        if (run_dir / CHECKPOINT_FILE).exists():  # epoch 1 is checkpointed: pull the plug
            raise KeyboardInterrupt
        return real_objective(*args, **kwargs)

    monkeypatch.setattr(engine, "objective", interrupting)
    with pytest.raises(KeyboardInterrupt):
        train_run(config, store_b, device="cpu", progress=False)
    checkpoint = RunStore.load_checkpoint(run_dir)
    assert checkpoint["temperature"]["param"].shape == (1,)
    assert len(checkpoint["steps"]["optimizer"]["param_groups"][0]["params"]) == len(list(
        straight.load_model(store_a).parameters())) + 1  # the temperature trains in the student's optimiser

    monkeypatch.setattr(engine, "objective", real_objective)
    resumed = train_run(config, store_b, device="cpu", progress=False)
    numeric = ("train_loss", "val_accuracy", "test_accuracy", "tau_mean", "tau_std", "tau_min", "tau_max",
               "ctkd_lambda")
    for a, b in zip(straight.history, resumed.history):
        assert {k: a[k] for k in numeric} == {k: b[k] for k in numeric}
    assert resumed.tau == straight.tau
    weights_a, weights_b = store_a.load_state_dict(config), store_b.load_state_dict(config)
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


# --------------------------------------------------------------------------- successive halving


def _energy(kwh: float) -> EnergyReport:
    return EnergyReport(duration_s=kwh * 1e6, components={"cpu": ComponentEnergy("cpu", kwh, "estimated", "TDP")})


def _fake_run(config: RunConfig, val_curve, started: float) -> RunResult:
    """A run of ``config.train.epochs`` epochs trained from scratch (its own wall times, from ``started``) whose
    validation accuracy follows ``val_curve``; it costs one unit per epoch."""
    epochs = config.train.epochs
    history = [{"epoch": e, "val_accuracy": val_curve[e - 1], "test_accuracy": val_curve[e - 1] - 1.0,
                "wall_time_s": started + e} for e in range(1, epochs + 1)]
    return RunResult(
        key=config.key, name=config.name, config=config, test_accuracy=history[-1]["test_accuracy"],
        val_accuracy=history[-1]["val_accuracy"], energy=_energy(1e-3 * epochs),
        flops={"training_flops": 1e12 * epochs}, wall_time_s=10.0 * epochs, tau={"mode": "fixed"},
        history=history, data={}, versions={}, device="cpu", finished_at="",
    )


def test_successive_halving_stops_the_worse_taus_early_and_bills_every_trial(smoke, store):
    base = smoke.kd_config("digits", 0, "hkd", epochs=9)
    grid = [1.0, 2.0, 4.0, 8.0, 16.0, 20.0]
    # Validation accuracy per epoch: tau 4 is best throughout, tau 20 worst; distinct values, no ties.
    level = {1.0: 50.0, 2.0: 60.0, 4.0: 80.0, 8.0: 70.0, 16.0: 65.0, 20.0: 40.0}
    asked = []

    def fake_train(config, run_store, device, data_root, progress):
        tau = config.temperature.tau
        asked.append((tau, config.train.epochs))
        assert config.train.milestones == base.train.milestones  # the full run's schedule, stopped early
        return _fake_run(config, [level[tau] + e for e in range(1, 10)], started=1000.0 * len(asked))

    settings = HalvingSettings(min_epochs=1, reduction_factor=3)
    assert settings.rungs(9) == (1, 3, 9)
    result = successive_halving_sweep(base, grid, store, device="cpu", progress=False, settings=settings,
                                      train=fake_train)
    assert isinstance(result, HalvingResult) and result.grid == grid and result.rungs == (1, 3, 9)
    assert result.chosen_tau == 4.0 and result.test_accuracy == level[4.0] + 9 - 1.0
    # Asynchronous halving: the first trials have no competition and may run to the end, but the best tau
    # always does, and some worse ones stop at a rung.
    assert len(result.pruned_taus) >= 2 and 4.0 not in result.pruned_taus
    assert all(level[tau] < level[4.0] for tau in result.pruned_taus)
    for trial in result.trials:
        # A trial runs rung by rung and stops at a rung; only full-length trials are candidates.
        assert trial.stopped_at_epoch in (1, 3, 9)
        assert trial.pruned == (trial.stopped_at_epoch < 9)
        assert [r.config.train.epochs for r in trial.runs] == [e for e in (1, 3, 9) if e <= trial.stopped_at_epoch]
    # Every trial starts; pruned ones stop early. A trial pays for its furthest run, whose record covers
    # the epochs before it: fewer epochs than the grid's 6 x 9.
    assert result.n_trials == len(grid) and sorted(set(asked)) == sorted(asked)
    assert result.runs == [t.runs[-1] for t in result.trials]
    assert result.all_runs == [r for t in result.trials for r in t.runs]
    assert result.epochs_trained == sum(t.stopped_at_epoch for t in result.trials) < len(grid) * 9
    # The bill is the sum over the runs it paid for.
    assert result.training_flops == pytest.approx(sum(r.training_flops for r in result.runs))
    assert result.training_flops == pytest.approx(1e12 * result.epochs_trained)
    assert result.energy.energy_kwh == pytest.approx(sum(r.energy.energy_kwh for r in result.runs), rel=1e-12)
    assert result.energy.energy_kwh == pytest.approx(1e-3 * result.epochs_trained, rel=1e-12)
    assert result.wall_time_s == pytest.approx(10.0 * result.epochs_trained)


def test_truncated_runs_have_their_own_key_and_the_schedule_of_the_full_run(smoke):
    full = smoke.kd_config("digits", 0, "hkd", TemperatureSpec.fixed(4), epochs=8)
    short = truncated(full, 2)
    assert short.train.epochs == 2 and short.train.milestones == full.train.milestones
    assert short.key != full.key and truncated(full, 8) == full
    for step in range(2 * 5):
        assert lr_factor(step, 5, short.train) == lr_factor(step, 5, full.train)
    with pytest.raises(ValueError, match="1 <= epochs <= 8"):
        truncated(full, 9)


def test_successive_halving_on_real_runs_continues_reuses_and_never_bills_cached_runs_as_free(
        smoke, store, monkeypatch):
    base = smoke.kd_config("digits", 0, "hkd", epochs=3)  # rungs after 1 and 2 epochs, then the full run
    taus = [2.0, 4.0]
    settings = HalvingSettings(min_epochs=1, reduction_factor=2)
    result = successive_halving_sweep(base, taus, store, device="cpu", progress=False, settings=settings)
    assert result.rungs == (1, 2, 3)
    grid = [base.replace(temperature=TemperatureSpec.fixed(tau)) for tau in taus]
    completed = [t for t in result.trials if not t.pruned]
    assert completed and result.chosen.config in grid
    for trial, full in zip(result.trials, grid):
        first = trial.runs[0]
        # The one-epoch rung is a run of its own (not the full run under another name) ...
        assert first.config == truncated(full, 1) and first.key != full.key and len(first.history) == 1
        assert store.is_finished(truncated(full, 1))
        if trial.pruned:
            assert not store.is_finished(full)
        if len(trial.runs) >= 2:
            # ... the two-epoch rung continued it rather than retraining its epoch, so only it is billed ...
            second = trial.runs[1]
            assert second.config == truncated(full, 2) and second.history[0] == first.history[0]
            assert successive_halving.continues(second, first) and first not in trial.billed_runs
            assert not (store.run_dir(first.config) / RESUME_STATE_FILE).exists()
        if not trial.pruned:
            # ... and a survivor continues into the full-length run, the grid's run for its tau: only that
            # run is billed, and no rung keeps its final state any more.
            last = trial.runs[-1]
            assert last.config == full and successive_halving.continues(last, trial.runs[-2])
            assert last.history[:2] == second.history
            assert trial.billed_runs == [last]
            assert not (store.run_dir(second.config) / RESUME_STATE_FILE).exists()
        else:
            assert trial.billed_runs == [trial.runs[-1]]
            assert not (store.run_dir(trial.runs[-1].config) / RESUME_STATE_FILE).exists()
    assert result.runs == [r for t in result.trials for r in t.billed_runs]
    assert result.training_flops == pytest.approx(sum(r.training_flops for r in result.runs))
    assert result.energy.energy_kwh == pytest.approx(sum(r.energy.energy_kwh for r in result.runs), rel=1e-12)

    # Again: everything is loaded, nothing trained, and the bill is the same (a cached run is not free).
    def no_training(*args, **kwargs):
        raise AssertionError("a cached run was trained again")

    monkeypatch.setattr(lifecycle, "_live", no_training)
    again = successive_halving_sweep(base, taus, store, device="cpu", progress=False, settings=settings)
    assert again.energy.energy_kwh == result.energy.energy_kwh and again.training_flops == result.training_flops
    assert again.chosen_tau == result.chosen_tau
    # The trials' full-length runs are the grid's runs: the grid loads those it shares.
    finished = [full for full in grid if store.is_finished(full)]
    assert finished
    monkeypatch.undo()
    sweep = tuned_sweep(base, taus, store, device="cpu", progress=False)
    assert {r.key for r in sweep.runs} >= {c.key for c in finished}


def test_successive_halving_refuses_what_the_grid_refuses(smoke, store):
    with pytest.raises(ValueError, match="val_fraction > 0"):
        successive_halving_sweep(smoke.kd_config("digits", 0).replace(val_fraction=0.0), [2, 4], store)
    with pytest.raises(ValueError, match="role='kd'"):
        successive_halving_sweep(smoke.student_config("digits", 0), [2, 4], store)
    with pytest.raises(ValueError, match="repeated"):
        successive_halving_sweep(smoke.kd_config("digits", 0), [2, 2], store)
    with pytest.raises(ValueError, match="reduction_factor"):
        HalvingSettings(reduction_factor=1)
    assert list(store.runs_dir.iterdir()) == []

"""Tests for greenkd_utils.core.quantization: FX QAT, int8 conversion, model size, the cached QAT run."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
from torch import nn

from greenkd_utils.core import quantization as q
from greenkd_utils.core.config import AugmentSettings, RunConfig, TrainSettings
from greenkd_utils.core.models import create_model
from greenkd_utils.energy.flops import train_step_flops
from greenkd_utils.energy.report import EnergyReport
from greenkd_utils.runs.store import CHECKPOINT_FILE, MODEL_FILE
from greenkd_utils.runs.tasks import qat as qat_task
from greenkd_utils.runs.sweep import train_qat

BACKEND = q.resolve_backend("auto")
SHAPE = (1, 8, 8)


class TinyNet(nn.Module):
    """conv-bn-relu twice, a residual add and a linear head: what FX QAT must fuse and quantize."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1, self.relu1 = nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()
        self.conv2, self.bn2, self.relu2 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        y = self.relu1(self.bn1(self.conv1(x)))
        y = y + self.relu2(self.bn2(self.conv2(y)))
        return self.fc(torch.flatten(self.pool(y), 1))


def _trained_prepared(model: nn.Module) -> nn.Module:
    """A prepared model after a few SGD steps, so its observers have seen data."""
    torch.manual_seed(0)
    prepared = q.prepare_qat(model, BACKEND, SHAPE)
    optimizer = torch.optim.SGD(prepared.parameters(), lr=0.05)
    x, y = torch.randn(32, *SHAPE), torch.randint(0, 10, (32,))
    with q.quiet_quantization_warnings():
        for _ in range(3):
            loss = nn.functional.cross_entropy(prepared(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return prepared


def test_prepare_fuses_conv_bn_and_inserts_fake_quant():
    prepared = q.prepare_qat(TinyNet(), BACKEND, SHAPE)
    names = {type(m).__name__ for m in prepared.modules()}
    assert "ConvBnReLU2d" in names  # conv-bn-relu fused into one QAT module
    # No batch norm is left as a layer of its own: each one lives inside a fused QAT conv module.
    called = [prepared.get_submodule(n.target) for n in prepared.graph.nodes if n.op == "call_module"]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in called)
    assert any("FakeQuantize" in n for n in names)
    assert prepared.training


def test_qat_model_converts_to_int8_runs_on_cpu_and_is_smaller():
    model = TinyNet()
    prepared = _trained_prepared(model)
    int8 = q.convert_to_int8(prepared, BACKEND)
    assert any(p.is_quantized for p in int8.state_dict().values() if isinstance(p, torch.Tensor))
    images = torch.randint(0, 256, (20, *SHAPE), dtype=torch.uint8)
    logits = q.int8_logits(int8, images, torch.tensor([0.5]), torch.tensor([0.25]), BACKEND)
    assert logits.shape == (20, 10) and logits.dtype == torch.float32 and torch.isfinite(logits).all()
    # The fake-quant network predicted what the int8 model computes, up to rounding.
    with torch.no_grad():
        reference = prepared.eval()((images.float() / 255.0 - 0.5) / 0.25)
    assert (reference.argmax(1) == logits.argmax(1)).float().mean() >= 0.8
    assert q.state_dict_bytes(int8) < q.state_dict_bytes(model)
    # prepared is not consumed by conversion
    assert any("FakeQuantize" in type(m).__name__ for m in prepared.modules())


def test_mobilenetv2_int8_is_about_four_times_smaller():
    model = create_model("mobilenetv2", 10, 1)
    int8 = q.convert_to_int8(_trained_prepared(model), BACKEND)
    ratio = q.state_dict_bytes(model) / q.state_dict_bytes(int8)
    assert 3.0 < ratio < 4.5


def test_qat_step_flops_match_the_float_network_and_leave_the_model_untouched():
    model = create_model("mobilenetv2", 10, 1)
    prepared = q.prepare_qat(model, BACKEND, SHAPE)
    before = {k: v.clone() for k, v in prepared.state_dict().items()}
    flops = q.qat_step_flops(prepared, SHAPE)
    # Conv-bn fusion keeps one convolution per layer; fake quantization is elementwise and not counted.
    assert flops == train_step_flops(model, SHAPE)
    after = prepared.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_known_quantization_warnings_are_silenced_and_others_are_not():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        int8 = q.convert_to_int8(_trained_prepared(TinyNet()), BACKEND)
        q.int8_logits(int8, torch.zeros(4, *SHAPE, dtype=torch.uint8), torch.zeros(1), torch.ones(1), BACKEND)
        with q.quiet_quantization_warnings():
            warnings.warn("something else entirely", UserWarning)
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "deprecated" in m or "quant_min" in m], messages
    assert "something else entirely" in messages


def test_missing_quantization_api_fails_with_a_clear_message(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_fx(name, *args, **kwargs):
        if name.startswith("torch.ao.quantization.quantize_fx"):
            raise ImportError("no module named quantize_fx")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_fx)
    with pytest.raises(ImportError, match="prepare_qat_fx"):
        q.quantization_api()


def test_backend_choices():
    assert BACKEND in q.BACKENDS
    with pytest.raises(ValueError, match="valid: auto"):
        q.resolve_backend("tpu")
    with pytest.raises(ValueError, match="unknown quantization backend"):
        q.QATConfig(dataset="digits", backend="tpu")


# -- the cached run ------------------------------------------------------------------------------
TINY = TrainSettings(epochs=2, batch_size=32, lr=0.05, milestones=(1,), warmup_epochs=0,
                     augment=AugmentSettings(crop_padding=0, flip=False, rotation_deg=0.0))


def _student(**changes) -> RunConfig:
    fields = dict(role="student", dataset="digits", model="mobilenetv2", seed=0, train=TINY, profile="smoke",
                  val_fraction=0.2, train_subset=96, test_subset=40)
    fields.update(changes)
    return RunConfig(**fields)


@pytest.mark.parametrize("epochs, fraction, expected", [(1, 0.75, 1), (2, 0.75, 1), (4, 0.75, 3), (100, 0.75, 75), (4, 1.0, 4)])
def test_freeze_epoch(epochs, fraction, expected):
    config = q.QATConfig(dataset="digits", train=dataclasses.replace(TINY, epochs=epochs), freeze_fraction=fraction)
    assert config.freeze_epoch == expected


def test_qat_config_has_its_own_key_and_round_trips():
    student = _student()
    config = q.QATConfig.from_student(student)
    assert config.init_from == student
    assert config.key != student.key and config.name.startswith("qat_digits_mobilenetv2")
    assert q.QATConfig.from_dict(config.to_dict()) == config
    assert config.key == q.QATConfig.from_student(student).key
    assert dataclasses.replace(config, seed=1).key != config.key
    assert dataclasses.replace(config, backend="qnnpack").key != config.key
    assert q.QATConfig.from_student(student, init="scratch").key != config.key
    # Another starting run is another QAT run.
    assert q.QATConfig.from_student(student.replace(seed=1)).key != config.key
    with pytest.raises(ValueError, match="cross-entropy student"):
        q.QATConfig.from_student(student.replace(role="teacher"))
    with pytest.raises(ValueError, match="valid: student, scratch"):
        q.QATConfig.from_student(student, init="pretrained")
    with pytest.raises(ValueError, match="data and model"):
        dataclasses.replace(config, model="resnet18")


def test_train_qat_from_scratch_is_cached_and_reloads(store):
    config = q.QATConfig.from_student(_student(), init="scratch", freeze_fraction=0.5)
    pipeline = train_qat(config, store, device="cpu", progress=False)
    result = pipeline.qat
    assert pipeline.initial is None and result.extras["initial_test_accuracy"] is None
    assert 0.0 <= result.test_accuracy <= 100.0 and pipeline.test_accuracy == result.test_accuracy
    assert result.extras["model_size"]["int8_bytes"] < result.extras["model_size"]["fp32_bytes"]
    assert result.training_flops > 0 and result.energy.energy_kwh > 0
    assert [h["observers_frozen"] for h in result.history] == [False, True]
    run_dir = store.run_dir(config)
    assert (run_dir / MODEL_FILE).is_file() and not (run_dir / CHECKPOINT_FILE).exists()
    # A second call is a store hit: same record, no training.
    again = train_qat(config, store, device="cpu", progress=False).qat
    assert again.finished_at == result.finished_at and again.test_accuracy == result.test_accuracy
    # The stored weights rebuild the same int8 model.
    int8 = qat_task.load_int8_model(result, store)
    images = torch.randint(0, 256, (16, *SHAPE), dtype=torch.uint8)
    assert int8(torch.zeros(2, *SHAPE)).shape == (2, 10)
    assert q.int8_logits(int8, images, torch.zeros(1), torch.ones(1), config.backend).shape == (16, 10)


def test_qat_fine_tunes_the_trained_student_and_costs_both_stages(store):
    student = _student()
    config = q.QATConfig.from_student(student, train=dataclasses.replace(TINY, epochs=1, lr=0.005))
    pipeline = train_qat(config, store, device="cpu", progress=False)
    initial = pipeline.initial
    assert initial is not None and store.is_finished(student)  # the float student was trained first
    assert pipeline.qat.extras["initial_test_accuracy"] == pytest.approx(initial.test_accuracy, abs=1e-3)
    assert pipeline.energy.energy_kwh == pytest.approx(initial.energy.energy_kwh + pipeline.qat.energy.energy_kwh)
    assert pipeline.training_flops == pytest.approx(initial.training_flops + pipeline.qat.training_flops)
    assert pipeline.wall_time_s > pipeline.qat.wall_time_s
    # One epoch at the student's samples per epoch.
    assert pipeline.qat.flops["samples_seen"] == initial.history[0]["samples_seen"]


def test_an_interrupted_qat_run_resumes_from_its_checkpoint(store, monkeypatch):
    config = q.QATConfig.from_student(_student(train_subset=64, test_subset=20), init="scratch")
    real_convert = qat_task.convert_to_int8

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("interrupted after the last epoch")

    monkeypatch.setattr(qat_task, "convert_to_int8", crash)
    with pytest.raises(KeyboardInterrupt):
        train_qat(config, store, device="cpu", progress=False)
    assert not store.is_finished(config)
    checkpoint = store.load_checkpoint(store.run_dir(config))
    assert checkpoint is not None and checkpoint["epoch"] == TINY.epochs - 1

    monkeypatch.setattr(qat_task, "convert_to_int8", real_convert)
    result = train_qat(config, store, device="cpu", progress=False).qat
    # Nothing was trained again: the history is the checkpoint's, and the energy includes the first attempt's.
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert result.history == checkpoint["history"]
    checkpointed = EnergyReport.total(EnergyReport.from_dict(e) for e in checkpoint["energy_by_phase"].values())
    assert result.energy.energy_kwh >= checkpointed.energy_kwh > 0

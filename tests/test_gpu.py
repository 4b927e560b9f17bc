"""What only a CUDA GPU can show: the fast path as the engine runs it there, the absence of host syncs,
NVML's measured energy, torch.compile, and resuming a run on the GPU.

Every test is marked ``gpu`` and skipped without CUDA, so the default test-suite never needs a GPU.
On a GPU machine: ``pytest -m gpu`` (``bash benchmarks/gpu_check.sh`` runs them as its first step).
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import time
import warnings

import pytest
import torch
import torch.nn.functional as F

from greenkd_utils.core.config import AugmentSettings, RunConfig, TemperatureSpec, TrainSettings
from greenkd_utils.core.models import create_model
from greenkd_utils.energy.meter import EnergyMeter
from greenkd_utils.energy.report import JOULES_PER_KWH
from greenkd_utils.runs.device_data import DeviceData
from greenkd_utils.runs.execution import ExecutionPlan, make_optimizer
from greenkd_utils.runs.lifecycle import begin
from greenkd_utils.runs.lifecycle import train as train_run
from greenkd_utils.runs.store import CHECKPOINT_FILE, RunStore
from greenkd_utils.runs.tasks import classification as engine
from greenkd_utils.runs.tasks.classification import ClassificationTask
from greenkd_utils.settings.profiles import load_profile

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

CUDA = torch.device("cuda")
PAPER_AUGMENT = AugmentSettings(crop_padding=4, flip=True, rotation_deg=15.0)


def cifar_shaped(n: int, seed: int = 0, classes: int = 10):
    """uint8 (n, 3, 32, 32) images on the GPU, learnable: a coarse colour pattern per class plus noise."""
    generator = torch.Generator().manual_seed(seed)
    patterns = F.interpolate(torch.rand(classes, 3, 4, 4, generator=generator) * 175 + 40, size=32, mode="nearest")
    labels = torch.randint(0, classes, (n,), generator=generator)
    images = (patterns[labels] + torch.randn(n, 3, 32, 32, generator=generator) * 40).clamp(0, 255)
    scaled = images / 255.0
    mean, std = scaled.mean(dim=(0, 2, 3)), scaled.std(dim=(0, 2, 3))
    return images.to(torch.uint8).to(CUDA), labels.to(CUDA), mean.to(CUDA), std.to(CUDA)


class KDEpochs:
    """The paper's pair (ResNet18 -> MobileNetV2) as the lifecycle sets up a fast KD run, on CIFAR-shaped data
    of its own; ``epoch`` is the lifecycle's training phase."""

    def __init__(self, settings: TrainSettings, n_images: int, teacher="resnet18", student="mobilenetv2"):
        images, labels, mean, std = cifar_shaped(n_images)
        data = DeviceData(train=(images, labels), val=(images[:0], labels[:0]), test=(images[:0], labels[:0]),
                          mean=mean, std=std, num_classes=10, in_channels=3, image_size=32)
        teacher_config = RunConfig(role="teacher", dataset="cifar10", model=teacher, train=settings)
        config = RunConfig(role="kd", dataset="cifar10", model=student, train=settings, loss="hkd",
                           temperature=TemperatureSpec.stochastic(2, 20), teacher=teacher_config)
        torch.manual_seed(0)
        self.task = ClassificationTask(config, CUDA, {}, store=None, data=data)
        self.task.teacher = create_model(teacher, 10).to(CUDA).eval()
        self.temperature, self.counts, self.steps_of_run = begin(self.task)
        self.plan, self.student, self.settings = self.task.plan, self.task.model, settings
        self.steps = self.task.steps_per_epoch
        self.epochs_run = 0
        self.tallies = []
        # The epoch's summary (its one host read) is left out: the tests read the tally instead.
        self.task.summarise_epoch = lambda tally: self.tallies.append(tally) or {}

    def draw_taus(self):
        return self.temperature.for_epoch(self.epochs_run, self.steps, self.task.tau_batch_size, CUDA)

    def epoch(self, taus=None):
        taus = self.draw_taus() if taus is None else taus
        forwards = self.counts.teacher_forwards
        self.steps_of_run.epoch(self.epochs_run, taus, lambda n: None)
        self.epochs_run += 1
        tally = self.tallies[-1]
        return {"seen": tally.seen, "loss_sum": tally.loss_sum, "teacher_forwards": self.counts.teacher_forwards - forwards}


def test_fast_settings_on_cuda_give_bf16_autocast_channels_last_and_fused_sgd():
    plan = ExecutionPlan.for_run(TrainSettings(fast=True), CUDA)
    assert plan.autocast_dtype is torch.bfloat16 and plan.channels_last and plan.fused_optimizer
    assert not plan.compile
    model = plan.prepare_model(create_model("mobilenetv2", 10))
    assert model.features[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    assert make_optimizer(model, TrainSettings(), plan).defaults["fused"] is True
    x = plan.prepare_batch(torch.randn(4, 3, 32, 32, device=CUDA))
    with plan.autocast():
        logits = model(x)
    assert logits.dtype is torch.bfloat16
    assert all(p.dtype is torch.float32 for p in model.parameters())  # master weights stay fp32
    # Without `fast` the numerics are fp32, but the optimiser is fused wherever CUDA is.
    plain = ExecutionPlan.for_run(TrainSettings(fast=False), CUDA)
    assert plain.autocast_dtype is None and not plain.channels_last and plain.fused_optimizer


def test_fast_path_trains_a_kd_epoch_on_cifar_shaped_data():
    run = KDEpochs(TrainSettings(batch_size=128, fast=True, augment=PAPER_AUGMENT), n_images=2048)
    before = [p.detach().clone() for p in run.student.parameters()]
    losses = []
    for _ in range(2):
        stats = run.epoch()
        assert stats["seen"] == 2048 and stats["teacher_forwards"] == 2048
        losses.append(float(stats["loss_sum"]) / stats["seen"])
    assert all(math.isfinite(loss) and loss > 0 for loss in losses), losses
    assert any(not torch.equal(a, b) for a, b in zip(before, run.student.parameters()))
    assert all(torch.isfinite(p).all() for p in run.student.parameters())


def test_train_epoch_does_not_synchronise_with_the_host_per_batch_on_cuda():
    run = KDEpochs(TrainSettings(batch_size=128, fast=True, augment=PAPER_AUGMENT), n_images=2048)
    run.epoch()  # allocations, cuDNN and cuBLAS set-up happen here, outside the watched epoch
    taus = run.draw_taus()  # the epoch's one host-to-device copy, made before the loop as the engine does
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")  # every synchronising CUDA call now warns, from where it was made
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            stats = run.epoch(taus)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [f"{w.filename}:{w.lineno}" for w in caught if "synchronizing CUDA operation" in str(w.message)]
    assert stats["seen"] == 2048 and run.steps == 16
    # One per batch would be 16; a single one would be a per-epoch cost (e.g. in the shuffle), not per batch.
    assert len(syncs) <= 1, syncs
    assert torch.isfinite(stats["loss_sum"])


def test_energy_meter_measures_the_gpu_with_nvml_energy_counter():
    a = torch.randn(4096, 4096, device=CUDA)
    b = torch.randn(4096, 4096, device=CUDA)
    with EnergyMeter(device=CUDA, sample_interval_s=0.2) as meter:
        until = time.monotonic() + 2.0
        while time.monotonic() < until:
            for _ in range(20):
                a = torch.tanh(a @ b)
            torch.cuda.synchronize()
    report = meter.report
    gpu = report.components["gpu"]
    assert gpu.source == "measured", gpu
    assert gpu.method.startswith("NVML total-energy counter"), gpu.method
    watts = gpu.energy_kwh * JOULES_PER_KWH / report.duration_s
    # An idle H100 draws tens of watts and a busy one hundreds; far outside that, units are wrong.
    assert 10.0 < watts < 2000.0, (watts, report.label())


def test_compiled_fast_path_trains_and_never_recompiles_after_the_first_epoch(monkeypatch):
    # A small student keeps the compile time short; the code path is the one kd_epoch.py and the engine use.
    settings = TrainSettings(batch_size=128, fast=True, compile=True, augment=PAPER_AUGMENT)
    run = KDEpochs(settings, n_images=512, teacher="resnet18", student="wrn16_1")
    assert run.plan.compile
    first = run.epoch()
    # Every batch has the same shape (the last partial one is dropped), so later epochs reuse the graphs.
    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
    second = run.epoch()
    for stats in (first, second):
        assert stats["seen"] == 512
        assert torch.isfinite(stats["loss_sum"])


def test_interrupted_run_on_cuda_resumes_to_the_same_result(tmp_path, monkeypatch):
    # cuDNN's default algorithms may add in any order; the deterministic ones make the comparison tight.
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    config = load_profile("smoke").kd_config(
        "digits", seed=0, loss="hkd", temperature=TemperatureSpec.stochastic(2, 20),
        epochs=2, milestones=(1,), augment={"crop_padding": 1, "flip": True, "rotation_deg": 5.0},
    )
    config = config.replace(train=dataclasses.replace(config.train, fast=True))

    store_a = RunStore(tmp_path / "a")
    straight = train_run(config, store_a, device="cuda", progress=False)
    assert straight.device.startswith("cuda")
    assert straight.energy.components["gpu"].source == "measured"

    store_b = RunStore(tmp_path / "b")
    shutil.copytree(store_a.run_dir(config.teacher), store_b.run_dir(config.teacher))
    run_dir = store_b.run_dir(config)
    real_objective = engine.objective

    def interrupting(*args, **kwargs):
        if (run_dir / CHECKPOINT_FILE).exists():  # the first epoch is checkpointed: stop the process here
            raise KeyboardInterrupt
        return real_objective(*args, **kwargs)

    monkeypatch.setattr(engine, "objective", interrupting)
    with pytest.raises(KeyboardInterrupt):
        train_run(config, store_b, device="cuda", progress=False)
    assert not store_b.is_finished(config)
    monkeypatch.setattr(engine, "objective", real_objective)
    resumed = train_run(config, store_b, device="cuda", progress=False)

    assert [h["epoch"] for h in resumed.history] == [1, 2]
    assert resumed.tau == straight.tau  # the temperature's random stream continued where it stopped
    assert resumed.flops["samples_seen"] == straight.flops["samples_seen"]
    assert abs(resumed.test_accuracy - straight.test_accuracy) <= 2.0, (resumed.test_accuracy, straight.test_accuracy)
    weights_a, weights_b = store_a.load_state_dict(config), store_b.load_state_dict(config)
    assert weights_a.keys() == weights_b.keys()
    floats = [name for name in weights_a if weights_a[name].is_floating_point()]
    flat_a = torch.cat([weights_a[name].flatten().double() for name in floats])
    flat_b = torch.cat([weights_b[name].flatten().double() for name in floats])
    # A lost optimiser, scheduler or RNG state moves the weights by tens of percent; float noise does not.
    relative = float((flat_a - flat_b).norm() / flat_a.norm())
    assert relative < 1e-2, relative

"""Small runs the tests share: a data-free KD and a detection KD config of a few seconds on the CPU, an
interruption of a run in its second epoch (a process killed after its first checkpoint), and a run trained by
an executor in the background, past its first checkpoint (for killing its worker)."""

from __future__ import annotations

import threading
import time
from typing import Dict, Tuple

import pytest

from greenkd_utils.core.config import TemperatureSpec
from greenkd_utils.core.detection.config import DetectionRunConfig, DetectionTrainSettings
from greenkd_utils.core.detection.models import AnchorSettings
from greenkd_utils.core.detection.shapes import ShapesSettings
from greenkd_utils.core.dfkd.config import DFKDConfig, SynthesisSettings
from greenkd_utils.runs import lifecycle
from greenkd_utils.runs.plan import RunPlan
from greenkd_utils.runs.store import CHECKPOINT_FILE
from greenkd_utils.settings.profiles import load_profile


def tiny_data_free(train_subset: int = 200, test_subset: int = 100, iterations: int = 3, batch_size: int = 16,
                   kd_steps: int = 3) -> DFKDConfig:
    """DeepInversion from a smoke-profile WRN-16-1 teacher on digits, two epochs, stochastic tau."""
    prof = load_profile("smoke")
    teacher = prof.teacher_config("digits", 0, "wrn16_1").replace(train_subset=train_subset, test_subset=test_subset)
    return DFKDConfig(
        dataset="digits", model="wrn16_1", teacher=teacher,
        synthesis=SynthesisSettings(method="deepinversion", iterations=iterations, batch_size=batch_size),
        temperature=TemperatureSpec.stochastic(2, 20),
        train=prof.train_settings("student", epochs=2, batch_size=batch_size),
        kd_steps=kd_steps, profile="test", val_fraction=0.2, train_subset=train_subset, test_subset=test_subset,
    )


def tiny_detection(num_train: int = 40, num_test: int = 12, **train) -> DetectionRunConfig:
    """A narrow SSD-VGG16 teacher and SSDLite-MobileNetV2 KD student on 32-pixel shapes, two epochs;
    ``train`` changes the detectors' training settings (batch 10, SGD at lr 0.05 by default)."""
    shapes = ShapesSettings(num_train=num_train, num_test=num_test, max_objects=2, min_size=0.3, max_size=0.65)
    common = dict(dataset="shapes", image_size=32, anchors=AnchorSettings(num_feature_maps=3), shapes=shapes,
                  val_fraction=0.25, profile="test")
    settings = DetectionTrainSettings(**{"epochs": 2, "batch_size": 10, "optimizer": "sgd", "lr": 0.05, **train})
    teacher = DetectionRunConfig(role="teacher", model="vgg16_ssd", width=0.125, train=settings, **common)
    return DetectionRunConfig(role="kd", model="mobilenetv2_ssdlite", width=0.35, train=settings, loss="hkd",
                              temperature=TemperatureSpec.stochastic(), teacher=teacher, **common)


def interrupt_in_second_epoch(task_type, config, store, monkeypatch) -> None:
    """Train ``config`` until its second epoch starts, then stop it as a killed process stops: the first
    epoch's checkpoint stays in ``store``. ``task_type``'s batches are as they were afterwards."""
    real_batches = task_type.batches

    def crash_in_second_epoch(self, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return real_batches(self, epoch)

    with monkeypatch.context() as patch:
        patch.setattr(task_type, "batches", crash_in_second_epoch)
        with pytest.raises(KeyboardInterrupt):
            lifecycle.train(config, store, "cpu", progress=False)


def train_past_first_checkpoint(executor, config, store, timeout_s: float) -> Tuple[threading.Thread, Dict, RunPlan]:
    """Start ``executor`` training ``config`` alone in a thread, and return once the run's first checkpoint is on
    disk (it is then in its second epoch): the thread, the dict that receives the executor's ``summary``, and
    the plan it runs."""
    plan = RunPlan()
    plan.add(config, "test")
    result: Dict = {}
    thread = threading.Thread(target=lambda: result.update(
        summary=executor.run(plan, store, device="cpu", progress=False)))
    thread.start()
    checkpoint = store.run_dir(config) / CHECKPOINT_FILE
    deadline = time.monotonic() + timeout_s
    while not checkpoint.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert checkpoint.exists(), f"the run wrote no checkpoint within {timeout_s:g} s"
    return thread, result, plan

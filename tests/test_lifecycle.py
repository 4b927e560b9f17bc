"""The one run lifecycle: every kind of run goes through ``runs.lifecycle.train``, a new kind of run is one
task class and one config, and the lifecycle alone owns seeding, resume, the metered region and its phases,
checkpoints after every epoch and the record."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict

import pytest
import torch

from greenkd_utils.core.config import RunConfig, StoredConfig, TemperatureSpec, TrainSettings
from greenkd_utils.core.detection.config import DetectionRunConfig
from greenkd_utils.core.dfkd.config import DFKDConfig
from greenkd_utils.core.quantization import QATConfig
from greenkd_utils.energy.phases import PHASES
from greenkd_utils.runs import lifecycle
from greenkd_utils.runs.execution import lr_factor
from greenkd_utils.runs.lifecycle import Task, register_task, task_for
from greenkd_utils.runs.record import RunResult
from greenkd_utils.runs.store import CHECKPOINT_FILE, RunStore
from greenkd_utils.settings.profiles import load_profile


# --------------------------------------------------------------------------- a new kind of run, in a test
@dataclass(frozen=True)
class ToyConfig(StoredConfig):
    """A linear model fitting noise: nothing but what a config must have."""

    seed: int = 0
    train: TrainSettings = field(default_factory=lambda: TrainSettings(epochs=3, lr=0.1, milestones=(2,), warmup_epochs=0))
    temperature: TemperatureSpec = None
    role: str = "toy"

    @property
    def name(self) -> str:
        return f"toy_s{self.seed}"

    @classmethod
    def from_dict(cls, d):
        d = dict(d)
        d["train"] = TrainSettings(**d["train"])
        if isinstance(d.get("temperature"), dict):
            d["temperature"] = TemperatureSpec(**d["temperature"])
        return cls(**d)


@register_task
class ToyTask(Task):
    name = "toy"
    config_type = ToyConfig
    flop_definition = "toy FLOPs: one per sample"

    @classmethod
    def recognises(cls, config_dict):
        return config_dict.get("role") == "toy"

    def build(self, temperature) -> None:
        self.model = torch.nn.Linear(4, 1)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=self.config.train.lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: lr_factor(step, 2, self.config.train))
        self.generator = torch.Generator().manual_seed(self.config.seed)
        self.samples_seen = self.images_evaluated = 0

    steps_per_epoch = 2

    def run_phase(self, phase, epoch, taus, on_step) -> Dict[str, Any]:
        losses = []
        for step in range(2):
            # The global torch RNG on purpose: a resumed run must draw what an uninterrupted one would.
            x, y = torch.rand(8, 4), torch.rand(8, 1)
            loss = ((self.model(x) - y) ** 2).mean() * (taus[step] if taus is not None else 1.0)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            losses.append(float(loss.detach()))
            on_step(1)
        self.samples_seen += 16
        return {"train_loss": sum(losses) / 2, "seen": 16}

    def evaluate(self, epoch, last):
        self.images_evaluated += 4
        return {"val_accuracy": float(epoch), "test_accuracy": float(epoch) + 0.5}

    def flops(self):
        return {"by_phase": {"training": float(self.samples_seen), "evaluation": float(self.images_evaluated)}}

    def describe_data(self):
        return {"n_train": 16}

    @classmethod
    def load_model(cls, result, store, device="cpu"):
        model = torch.nn.Linear(4, 1)
        model.load_state_dict(store.load_state_dict(result.config))
        return model


def test_a_new_kind_of_run_is_one_task_class_and_one_config(tmp_path):
    store = RunStore(tmp_path)
    config = ToyConfig(temperature=TemperatureSpec.stochastic(2, 20))
    result = lifecycle.train(config, store, "cpu", progress=False)
    assert isinstance(result, RunResult) and result.task == "toy" and result.config == config
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert result.test_accuracy == 2.5 and result.val_accuracy == 2.0
    # tau drawn by the lifecycle, per epoch, and described in the record
    assert result.tau["mode"] == "stochastic" and result.tau["count"] == 6
    assert all(2 <= h["tau_min"] <= h["tau_max"] <= 20 for h in result.history)
    # the record is complete, sealed, and loaded (not retrained) the second time
    assert result.training_flops == 48.0 and result.flops_of("evaluation") == 12.0
    assert "definition" in result.flops and result.metered_region
    assert not (store.run_dir(config) / CHECKPOINT_FILE).exists()
    again = lifecycle.train(config, store, "cpu", progress=False)
    assert again.to_dict() == result.to_dict()
    assert isinstance(result.load_model(store), torch.nn.Linear)


def test_the_history_records_each_epochs_own_learning_rate(tmp_path):
    # lr 0.1, x0.2 from epoch 2 (0-based) on: the last step of each epoch ran at 0.1, 0.1, 0.02.
    result = lifecycle.train(ToyConfig(), RunStore(tmp_path), "cpu", progress=False)
    assert [h["lr"] for h in result.history] == pytest.approx([0.1, 0.1, 0.02])


def test_energy_is_recorded_by_phase_and_the_phases_add_up_to_the_total(tmp_path):
    result = lifecycle.train(ToyConfig(), RunStore(tmp_path), "cpu", progress=False)
    assert set(result.energy_by_phase) <= set(PHASES)
    assert {"training", "evaluation", "checkpoints"} <= set(result.energy_by_phase)
    total = sum(report.energy_kwh for report in result.energy_by_phase.values())
    assert total == pytest.approx(result.energy.energy_kwh, rel=1e-9, abs=1e-15)
    assert sum(result.wall_time_by_phase.values()) == pytest.approx(result.wall_time_s, rel=0.05, abs=0.05)
    assert result.energy_of("synthesis") is None  # a phase this run does not have


def test_a_resumed_run_equals_an_uninterrupted_one_global_rng_included(tmp_path, monkeypatch):
    store = RunStore(tmp_path)
    straight = lifecycle.train(ToyConfig(seed=3), store, "cpu", progress=False)
    resumed_config = ToyConfig(seed=3)  # the same run, in another store
    other_store = RunStore(tmp_path / "other")
    real_phase = ToyTask.run_phase
    calls = {"n": 0}

    def crash_in_second_epoch(self, phase, epoch, taus, on_step):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_phase(self, phase, epoch, taus, on_step)

    monkeypatch.setattr(ToyTask, "run_phase", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        lifecycle.train(resumed_config, other_store, "cpu", progress=False)
    # the checkpoint of the first epoch is there; the global RNG has moved on since
    assert (other_store.run_dir(resumed_config) / CHECKPOINT_FILE).is_file()
    torch.rand(100)
    monkeypatch.setattr(ToyTask, "run_phase", real_phase)
    resumed = lifecycle.train(resumed_config, other_store, "cpu", progress=False)
    assert [h["train_loss"] for h in resumed.history] == pytest.approx([h["train_loss"] for h in straight.history], rel=1e-6)
    a, b = store.load_state_dict(straight.config), other_store.load_state_dict(resumed_config)
    assert all(torch.allclose(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- every task is a Task
def test_every_kind_of_run_goes_through_the_lifecycle():
    prof = load_profile("smoke")
    assert task_for(prof.teacher_config("digits", 0)).name == "classification"
    assert task_for(prof.kd_config("digits", 0, "hkd")).name == "classification"
    for config_type, name in ((DFKDConfig, "data_free_kd"), (DetectionRunConfig, "detection"), (QATConfig, "qat")):
        assert lifecycle.task_named(name).config_type is config_type
    with pytest.raises(TypeError, match="no task trains"):
        task_for(object())


def test_a_kd_run_records_flops_and_energy_by_phase_and_its_tau_per_epoch(tmp_path):
    prof = load_profile("smoke")
    config = prof.kd_config("digits", 0, "hkd")
    result = lifecycle.train(config, RunStore(tmp_path), "cpu", progress=False)
    assert result.training_flops == pytest.approx(result.flops_of("training"))
    assert result.flops_of("evaluation") > 0
    assert result.flops["images_evaluated"] == config.train.epochs * (result.data["n_val"] + result.data["n_test"])
    assert {"training", "evaluation", "checkpoints"} <= set(result.energy_by_phase)
    steps = result.history[0]["samples_seen"] // config.train.batch_size
    assert result.history[0]["lr"] == pytest.approx(config.train.lr * lr_factor(steps - 1, steps, config.train))


def test_old_module_paths_still_import_the_code_that_moved():
    import greenkd_utils.carbon as carbon
    import greenkd_utils.engine as engine
    from greenkd_utils import experiments, quantization
    from greenkd_utils.detection.training import DetectionRunResult
    from greenkd_utils.dfkd.trainer import DFKDResult, tuned_dfkd
    from greenkd_utils.energy.meter import EnergyMeter
    from greenkd_utils.runs.sweep import tuned_sweep
    from greenkd_utils.runs.tasks import classification

    assert engine is classification and engine.train_run is classification.train_run
    assert carbon.EnergyMeter is EnergyMeter
    assert DFKDResult is RunResult and DetectionRunResult is RunResult and tuned_dfkd is tuned_sweep
    assert callable(experiments.table1) and callable(experiments.verdict_table) and callable(quantization.table8)
    with pytest.raises(AttributeError, match="no attribute"):
        experiments.no_such_thing


def test_every_notebook_of_the_paper_has_its_module():
    notebooks = sorted(p.stem for p in (Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))
    paper = Path(__file__).parents[1] / "greenkd_utils" / "paper"
    missing = [nb for nb in notebooks if not nb.startswith("00_") and not (paper / f"{nb}.py").is_file()]
    assert not missing

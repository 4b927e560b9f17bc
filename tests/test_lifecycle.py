"""The one run lifecycle: every kind of run goes through ``runs.lifecycle.train``, a new kind of run is one
task class and one config (the toy task below, with no other file edited), and the lifecycle alone owns
seeding, the optimiser and its step, resume, the metered region and its phases, checkpoints and the record."""

from __future__ import annotations

import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from tiny_runs import interrupt_in_second_epoch, tiny_data_free, tiny_detection

from greenkd_utils.core.config import AugmentSettings, RunConfig, StoredConfig, TemperatureSpec, TrainSettings
from greenkd_utils.core.detection.config import DetectionRunConfig
from greenkd_utils.core.dfkd.config import DFKDConfig
from greenkd_utils.core.quantization import QATConfig
from greenkd_utils.energy.phases import PHASES
from greenkd_utils.runs import lifecycle, tasks
from greenkd_utils.runs.execution import ExecutionPlan, lr_factor
from greenkd_utils.runs.record import RunResult
from greenkd_utils.runs.registry import TASKS, register_task, task_for
from greenkd_utils.runs.store import CHECKPOINT_FILE, RunStore
from greenkd_utils.runs.task import Batch, Evaluation, Task
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
    """Its data, what a step computes, its FLOPs: the lifecycle does the rest."""

    name = "toy"
    config_type = ToyConfig
    flop_definition = "toy FLOPs: one per sample"
    steps_per_epoch = 2
    tau_batch_size = 8

    @classmethod
    def recognises(cls, config_dict):
        return config_dict.get("role") == "toy"

    @classmethod
    def build_model(cls, config, data):
        return torch.nn.Linear(4, 1)

    def build(self) -> None:
        self.model = self.build_model(self.config, {})
        self.plan = ExecutionPlan.for_run(self.config.train, self.device)

    def batches(self, epoch):
        for _ in range(self.steps_per_epoch):
            # The global torch RNG on purpose: a resumed run must draw what an uninterrupted one would.
            yield Batch(torch.rand(8, 4), targets=torch.rand(8, 1))

    def forward_train(self, batch, tau, teacher_outputs=None):
        out = self.model(batch.inputs)
        return out, {"mse": ((out - batch.targets) ** 2).mean() * (tau if tau is not None else 1.0)}

    def evaluate(self, epoch, last):
        return Evaluation({"val_accuracy": float(epoch), "test_accuracy": float(epoch) + 0.5}, images=4)

    def flops(self, counts):
        return {"by_phase": {"training": float(counts.samples_seen), "evaluation": float(counts.images_evaluated)}}

    def describe_data(self):
        return {"n_train": 16}


def test_a_new_kind_of_run_is_one_task_class_and_one_config(tmp_path):
    store = RunStore(tmp_path)
    config = ToyConfig(temperature=TemperatureSpec.stochastic(2, 20))
    result = lifecycle.train(config, store, "cpu", progress=False)
    assert isinstance(result, RunResult) and result.task == "toy" and result.config == config
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert result.test_accuracy == 2.5 and result.val_accuracy == 2.0
    # a tau for every batch, drawn by the lifecycle a whole epoch at a time, and described in the record
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


def test_each_phase_is_charged_what_ran_in_it(tmp_path, monkeypatch):
    # Known work in each phase: 0.05 s per training step (6 steps), 0.3 s per evaluation (3 epochs). The meter
    # must charge each phase its own time, and the phases must tile the metered region.
    real_forward, real_evaluate = ToyTask.forward_train, ToyTask.evaluate

    def slow_forward(self, batch, tau, teacher_outputs=None):
        time.sleep(0.05)
        return real_forward(self, batch, tau, teacher_outputs)

    def slow_evaluate(self, epoch, last):
        time.sleep(0.3)
        return real_evaluate(self, epoch, last)

    monkeypatch.setattr(ToyTask, "forward_train", slow_forward)
    monkeypatch.setattr(ToyTask, "evaluate", slow_evaluate)
    started = time.perf_counter()
    result = lifecycle.train(ToyConfig(), RunStore(tmp_path), "cpu", progress=False)
    elapsed = time.perf_counter() - started
    assert set(result.energy_by_phase) <= set(PHASES)
    assert {"training", "evaluation", "checkpoints"} <= set(result.energy_by_phase)
    wall, energy = result.wall_time_by_phase, result.energy_by_phase
    # Each phase was charged at least its own sleeps: time charged to the wrong phase leaves the phase it
    # belongs to below its floor (no upper bound: a loaded machine only adds time).
    assert wall["training"] >= 0.3 and wall["evaluation"] >= 0.9
    assert energy["training"].duration_s == pytest.approx(wall["training"], abs=0.05)
    assert energy["evaluation"].duration_s == pytest.approx(wall["evaluation"], abs=0.05)
    # The phases tile the metered region, which lies inside the call.
    assert sum(wall.values()) == pytest.approx(result.energy.duration_s, abs=0.05)
    assert result.energy.duration_s <= elapsed
    total = sum(report.energy_kwh for report in energy.values())
    assert total == pytest.approx(result.energy.energy_kwh, rel=1e-9, abs=1e-15)
    assert result.energy_of("synthesis") is None  # a phase this run does not have


def test_a_resumed_run_equals_an_uninterrupted_one_global_rng_included(tmp_path, monkeypatch):
    store = RunStore(tmp_path)
    straight = lifecycle.train(ToyConfig(seed=3), store, "cpu", progress=False)
    resumed_config = ToyConfig(seed=3)  # the same run, in another store
    other_store = RunStore(tmp_path / "other")
    interrupt_in_second_epoch(ToyTask, resumed_config, other_store, monkeypatch)
    # the checkpoint of the first epoch is there; the global RNG has moved on since
    assert (other_store.run_dir(resumed_config) / CHECKPOINT_FILE).is_file()
    torch.rand(100)
    resumed = lifecycle.train(resumed_config, other_store, "cpu", progress=False)
    assert [h["train_loss"] for h in resumed.history] == pytest.approx([h["train_loss"] for h in straight.history], rel=1e-6)
    a, b = store.load_state_dict(straight.config), other_store.load_state_dict(resumed_config)
    assert all(torch.allclose(a[k], b[k]) for k in a)


def test_a_checkpoint_of_the_earlier_layout_resumes_to_the_same_run(tmp_path, monkeypatch):
    # Layout 2: the task's own state held its optimiser, lr schedule, generator and counts.
    straight = lifecycle.train(ToyConfig(seed=4), RunStore(tmp_path / "straight"), "cpu", progress=False)
    store, config = RunStore(tmp_path / "old"), ToyConfig(seed=4)
    interrupt_in_second_epoch(ToyTask, config, store, monkeypatch)
    run_dir = store.run_dir(config)
    checkpoint = store.load_checkpoint(run_dir)
    old = {k: v for k, v in checkpoint.items() if k not in ("steps", "counts")}
    old.update(layout=2, task={**checkpoint["task"], **checkpoint["steps"], **checkpoint["counts"]})
    store.save_checkpoint(run_dir, old)
    resumed = lifecycle.train(config, store, "cpu", progress=False)
    # It continued from the second epoch, and ended where an uninterrupted run does.
    assert [e["from_epoch"] for e in store.training_log() if e["event"] == "started"] == [0, 1]
    assert [h["train_loss"] for h in resumed.history] == pytest.approx([h["train_loss"] for h in straight.history], rel=1e-6)
    assert resumed.flops == straight.flops


# --------------------------------------------------------------------------- every task is a Task
_NO_AUGMENT = AugmentSettings(crop_padding=0, flip=False, rotation_deg=0.0)


def _tiny_classification() -> RunConfig:
    prof = load_profile("smoke")
    return prof.kd_config("digits", 0, "hkd").replace(train_subset=96, test_subset=40)


def _tiny_data_free() -> DFKDConfig:
    return tiny_data_free(train_subset=96, test_subset=40, iterations=2, batch_size=8, kd_steps=2)


def _tiny_detection() -> DetectionRunConfig:
    return tiny_detection(num_train=24, num_test=8, batch_size=6)


def _tiny_qat() -> QATConfig:
    train = TrainSettings(epochs=2, batch_size=32, lr=0.05, milestones=(1,), warmup_epochs=0, augment=_NO_AUGMENT)
    student = RunConfig(role="student", dataset="digits", model="mobilenetv2", train=train, profile="smoke",
                        val_fraction=0.2, train_subset=64, test_subset=20)
    return QATConfig.from_student(student, init="scratch")


TINY_RUNS = {"classification": _tiny_classification, "data_free_kd": _tiny_data_free,
             "detection": _tiny_detection, "qat": _tiny_qat}


def test_every_built_in_kind_of_run_is_covered_here():
    assert set(TINY_RUNS) == {name for name, task in TASKS.items() if task.__module__.startswith(tasks.__name__)}


@pytest.mark.parametrize("kind", sorted(TINY_RUNS))
def test_every_kind_of_run_is_stepped_by_the_lifecycle(kind, tmp_path, monkeypatch):
    """Every optimiser step of every kind of run is taken by the lifecycle, on the optimiser the lifecycle
    built, once per batch the task produced."""
    config = TINY_RUNS[kind]()
    assert task_for(config).name == kind
    steps, real_make_optimizer = [], lifecycle.make_optimizer

    def spied_optimizer(*args, **kwargs):
        optimizer = real_make_optimizer(*args, **kwargs)
        real_step = optimizer.step

        def step(self, *a, **k):
            frame = sys._getframe(1)
            while "torch" in Path(frame.f_code.co_filename).parts:  # the lr scheduler's wrapper
                frame = frame.f_back
            steps.append(frame.f_code.co_filename)
            return real_step(*a, **k)

        optimizer.step = types.MethodType(step, optimizer)
        return optimizer

    monkeypatch.setattr(lifecycle, "make_optimizer", spied_optimizer)
    store = RunStore(tmp_path)
    result = lifecycle.train(config, store, "cpu", progress=False)
    assert result.task == kind
    # Its dependencies (a teacher) trained first, through the same lifecycle: at least one step per epoch each.
    assert len(steps) >= config.train.epochs and set(steps) == {lifecycle.__file__}
    assert [h["epoch"] for h in result.history] == list(range(1, config.train.epochs + 1))


def test_no_task_module_steps_an_optimiser_or_calls_backward():
    for module in (Path(tasks.__file__).parent).glob("*.py"):
        source = module.read_text()
        for forbidden in (".backward(", ".step(", "zero_grad", "make_optimizer", "manual_seed("):
            assert forbidden not in source, f"{module.name} calls {forbidden}: the lifecycle owns it"
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


def test_every_notebook_of_the_paper_has_its_module():
    notebooks = sorted(p.stem for p in (Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))
    paper = Path(__file__).parents[1] / "greenkd_utils" / "paper"
    missing = [nb for nb in notebooks if not nb.startswith("00_") and not (paper / f"{nb}.py").is_file()]
    assert not missing

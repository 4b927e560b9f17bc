"""Successive halving does no work twice, checked against counts taken inside the lifecycle (never read from
the records): every epoch it trains and every teacher pass it makes is counted once, a survivor continues
its last rung instead of starting over (and ends with the weights of an uninterrupted run), and the search
never costs more than the grid it replaces.

The runs are real and tiny: 400 digits, no augmentation (so the teacher's outputs can be reused), four
epochs with rungs after 1 and 2."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest
import torch

from greenkd_utils.core.config import AugmentSettings, TemperatureSpec, TrainSettings
from greenkd_utils.runs import lifecycle, successive_halving
from greenkd_utils.runs.lifecycle import train
from greenkd_utils.runs.store import RunStore
from greenkd_utils.runs.successive_halving import HalvingSettings, successive_halving_sweep
from greenkd_utils.runs.sweep import tuned_sweep
from greenkd_utils.runs.tasks.classification import ImageClassifierTask

SETTINGS = HalvingSettings(min_epochs=1, reduction_factor=2)  # rungs (1, 2, 4)
TAUS = [1.0, 2.0, 4.0, 8.0, 16.0]
STILL = AugmentSettings(crop_padding=0, flip=False, rotation_deg=0.0)


def base_config(smoke, seed=0):
    kd = smoke.kd_config("digits", seed, "hkd", TemperatureSpec.fixed(4))
    train_settings = TrainSettings(epochs=4, batch_size=32, lr=0.05, milestones=(3,), warmup_epochs=0, augment=STILL)
    teacher = kd.teacher.replace(train=TrainSettings(epochs=2, batch_size=32, lr=0.05, milestones=(1,),
                                                     warmup_epochs=0, augment=STILL), train_subset=400, test_subset=32)
    return kd.replace(train=train_settings, train_subset=400, test_subset=32, teacher=teacher)


class LifecycleCounts:
    """Epochs trained and teacher passes made, per run key, counted where the lifecycle does them."""

    def __init__(self, monkeypatch):
        self.epochs, self.teacher_passes = Counter(), Counter()
        real_epoch, real_outputs = lifecycle.TrainingSteps.epoch, ImageClassifierTask.all_teacher_outputs
        counts = self

        def epoch(steps, *args, **kwargs):
            counts.epochs[steps.task.config.key] += 1
            return real_epoch(steps, *args, **kwargs)

        def all_teacher_outputs(task):
            counts.teacher_passes[task.config.key] += 1
            return real_outputs(task)

        monkeypatch.setattr(lifecycle.TrainingSteps, "epoch", epoch)
        monkeypatch.setattr(ImageClassifierTask, "all_teacher_outputs", all_teacher_outputs)

    def of(self, keys) -> tuple:
        keys = set(keys)
        return (sum(n for k, n in self.epochs.items() if k in keys),
                sum(n for k, n in self.teacher_passes.items() if k in keys))


def test_the_bill_equals_the_epochs_and_teacher_passes_the_lifecycle_really_ran(smoke, store, monkeypatch):
    base = base_config(smoke)
    train(base.teacher, store, device="cpu", progress=False)  # the teacher is not the search's
    counted = LifecycleCounts(monkeypatch)
    result = successive_halving_sweep(base, TAUS, store, device="cpu", progress=False, settings=SETTINGS)
    assert result.rungs == (1, 2, 4)
    epochs, passes = counted.of(counted.epochs.keys() | counted.teacher_passes.keys())
    assert epochs == result.epochs_trained == sum(t.stopped_at_epoch for t in result.trials)
    # Without augmentation a trial computes the teacher's outputs once, whatever rung it reaches.
    assert passes == result.teacher_passes == len(TAUS)
    for trial in result.trials:
        keys = [r.key for r in trial.runs]
        assert counted.of(keys) == (trial.stopped_at_epoch, 1)
    # The FLOPs billed are those epochs and passes: per trial, samples through the student and one teacher pass.
    for trial in result.trials:
        run = trial.runs[-1]
        per_sample, n_train = run.flops["per_sample"], run.flops["samples_seen"] // len(run.history)
        step = per_sample["student_forward"] + per_sample["student_backward"]
        one_pass = run.flops["teacher_forwards"]  # the teacher's images: the training split, or all 400
        assert n_train <= one_pass <= 400
        expected = step * n_train * trial.stopped_at_epoch + per_sample["teacher_forward"] * one_pass
        assert run.training_flops == pytest.approx(expected, rel=1e-9)
    assert result.training_flops == pytest.approx(sum(t.runs[-1].training_flops for t in result.trials))

    # Again: all cached, nothing trained, the same bill.
    counted.epochs.clear()
    counted.teacher_passes.clear()
    again = successive_halving_sweep(base, TAUS, store, device="cpu", progress=False, settings=SETTINGS)
    assert sum(counted.epochs.values()) == sum(counted.teacher_passes.values()) == 0
    assert again.training_flops == result.training_flops and again.epochs_trained == result.epochs_trained


def test_a_survivor_continued_from_its_rung_equals_an_uninterrupted_run(smoke, tmp_path):
    base = base_config(smoke)
    searched = RunStore(tmp_path / "searched")
    result = successive_halving_sweep(base, TAUS, searched, device="cpu", progress=False, settings=SETTINGS)
    survivor = next(t for t in result.trials if not t.pruned)  # the first trial always reaches the end
    continued = survivor.runs[-1]
    assert continued.config == base.replace(temperature=TemperatureSpec.fixed(survivor.tau))
    assert successive_halving.continues(continued, survivor.runs[-2])
    starts = [e for e in searched.training_log() if e["key"] == continued.key and e["event"] == "started"]
    assert [e["from_epoch"] for e in starts] == [2]  # resumed after the 2-epoch rung, trained once

    alone = RunStore(tmp_path / "alone")
    uninterrupted = train(continued.config, alone, device="cpu", progress=False)
    assert [e["from_epoch"] for e in alone.training_log() if e["key"] == continued.key] == [0]
    assert continued.test_accuracy == uninterrupted.test_accuracy
    assert continued.val_accuracy == uninterrupted.val_accuracy
    assert [h["train_loss"] for h in continued.history] == [h["train_loss"] for h in uninterrupted.history]
    assert continued.training_flops == uninterrupted.training_flops
    a, b = searched.load_state_dict(continued.config), alone.load_state_dict(continued.config)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_halving_never_costs_more_than_the_grid_on_the_same_seeds(smoke, store):
    halving, grid = [], []
    for seed in (0, 1):
        base = base_config(smoke, seed)
        halving.append(successive_halving_sweep(base, TAUS, store, device="cpu", progress=False, settings=SETTINGS))
        grid.append(tuned_sweep(base, TAUS, store, device="cpu", progress=False))
    for h, g in zip(halving, grid):
        # Each trial pays at most its full-length run, which is the grid's run for that tau.
        assert h.training_flops <= g.training_flops
        assert h.epochs_trained <= g.epochs_trained == len(TAUS) * 4
        assert {r.key for r in h.runs if r.config.train.epochs == 4} <= {r.key for r in g.runs}
    # With five taus some trials stop at a rung (all five surviving needs each one to beat the ones before).
    assert sum(h.training_flops for h in halving) < sum(g.training_flops for g in grid)
    assert any(h.pruned_taus for h in halving)


def test_with_augmentation_nothing_is_reused_and_each_rung_pays_for_its_steps(smoke, store, monkeypatch):
    base = base_config(smoke)
    base = base.replace(train=dataclasses.replace(
        base.train, augment=AugmentSettings(crop_padding=1, flip=False, rotation_deg=0.0)))
    counted = LifecycleCounts(monkeypatch)
    result = successive_halving_sweep(base, TAUS[:2], store, device="cpu", progress=False, settings=SETTINGS)
    assert sum(counted.teacher_passes.values()) == 0 == result.teacher_passes
    for trial in result.trials:
        run = trial.runs[-1]
        assert run.flops["teacher_forwards"] == run.flops["samples_seen"]  # every step's batch, once
        assert sum(counted.epochs[r.key] for r in trial.runs) == trial.stopped_at_epoch


def test_expected_search_uses_optunas_pruner_and_saves_on_the_paper_grid():
    paper = successive_halving.expected_search(20, 100, HalvingSettings(4, 3), orders=50)
    assert paper.rungs == (4, 12, 36, 100)
    assert 20 * 4 <= paper.epochs_low <= paper.mean_epochs <= paper.epochs_high <= 20 * 100
    assert 1 <= paper.mean_full_length < 20
    assert paper.ratio_to_grid(1.0) < 0.3
    one = successive_halving.expected_search(1, 10, HalvingSettings(2, 2), orders=5)
    assert one.mean_epochs == 10 and one.ratio_to_grid(1.0, 3.0) == 1.0

"""Tests for greenkd_utils.runs.store: caching, atomic writes, safe loading, one training across processes."""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import time
from pathlib import Path

import pytest
import torch

from greenkd_utils.core.config import RunConfig
from greenkd_utils.runs import store as store_module
from greenkd_utils.runs.safe_load import safe_torch_load
from greenkd_utils.runs.store import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    MODEL_FILE,
    RESULT_FILE,
    RunStore,
    atomic_torch_save,
    atomic_write_json,
)


@pytest.fixture
def config(smoke) -> RunConfig:
    return smoke.teacher_config("digits", seed=0)


def fake_training(calls: list, record=None):
    """A stand-in for the engine: saves weights and a checkpoint, returns a record, counts its calls."""

    def train(run_dir: Path):
        calls.append(run_dir)
        assert (run_dir / CONFIG_FILE).is_file()  # the config is written before training starts
        RunStore.save_checkpoint(run_dir, {"epoch": 0, "weight": torch.ones(3)})
        RunStore.save_model(run_dir, {"weight": torch.arange(3.0)})
        return record or {"test_accuracy": 12.5, "history": [{"epoch": 1}]}

    return train


def _temp_files(folder: Path):
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------- caching


def test_get_or_run_trains_once_then_loads(store, config):
    calls = []
    first = store.get_or_run(config, fake_training(calls))
    assert len(calls) == 1 and first["test_accuracy"] == 12.5
    assert store.is_finished(config)
    second = store.get_or_run(config, fake_training(calls))
    third = RunStore(store.root).get_or_run(config, fake_training(calls))  # a fresh handle on the folder
    assert len(calls) == 1
    assert second == first == third
    run_dir = store.run_dir(config)
    assert config.key in run_dir.name and run_dir.parent == store.runs_dir
    assert json.loads((run_dir / CONFIG_FILE).read_text()) == json.loads(json.dumps(config.to_dict()))
    assert not (run_dir / CHECKPOINT_FILE).exists()  # a finished run keeps only its final weights
    assert torch.equal(store.load_state_dict(config)["weight"], torch.arange(3.0))
    assert list(store.finished_records()) == [first]


def test_another_config_is_another_run(store, config):
    calls = []
    store.get_or_run(config, fake_training(calls))
    store.get_or_run(config.replace(seed=1), fake_training(calls))
    assert len(calls) == 2 and calls[0] != calls[1]


def test_checkpoint_without_result_is_not_finished(store, config):
    run_dir = store.run_dir(config)
    run_dir.mkdir(parents=True)
    RunStore.save_checkpoint(run_dir, {"epoch": 3, "model": {"w": torch.zeros(2)}})
    RunStore.save_model(run_dir, {"w": torch.zeros(2)})
    assert not store.is_finished(config)
    assert store.load_result(config) is None
    with pytest.raises(FileNotFoundError, match="not finished"):
        store.load_state_dict(config)
    # The checkpoint is there for the trainer to resume from.
    assert RunStore.load_checkpoint(run_dir)["epoch"] == 3
    calls = []
    store.get_or_run(config, fake_training(calls))
    assert len(calls) == 1


@pytest.mark.parametrize(
    "content",
    [b'{"test_accuracy": 9', b"", b"\xff\xfe\x00garbage", b"null", b"[1, 2]"],
    ids=["truncated", "empty", "not-utf8", "null", "not-a-record"],
)
def test_corrupt_result_counts_as_unfinished(store, config, content):
    run_dir = store.run_dir(config)
    run_dir.mkdir(parents=True)
    (run_dir / RESULT_FILE).write_bytes(content)
    assert store.load_result(config) is None
    assert not store.is_finished(config)
    assert list(store.finished_records()) == []
    calls = []
    record = store.get_or_run(config, fake_training(calls))
    assert len(calls) == 1 and record["test_accuracy"] == 12.5
    assert store.load_result(config) == record  # the redone run replaced the corrupt record


def test_failed_training_leaves_the_run_unfinished(store, config):
    def broken(run_dir):
        RunStore.save_checkpoint(run_dir, {"epoch": 0})
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.get_or_run(config, broken)
    assert not store.is_finished(config)
    assert (store.run_dir(config) / CHECKPOINT_FILE).is_file()
    calls = []
    store.get_or_run(config, fake_training(calls))  # the lock was released
    assert len(calls) == 1


# --------------------------------------------------------------------------- atomic writes


def test_atomic_writes_leave_no_temporary_files(tmp_path, store, config):
    atomic_write_json(tmp_path / "a.json", {"x": [1, 2]})
    atomic_torch_save({"t": torch.ones(2)}, tmp_path / "b.pt")
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": [1, 2]}
    assert torch.equal(safe_torch_load(tmp_path / "b.pt")["t"], torch.ones(2))
    store.get_or_run(config, fake_training([]))
    assert _temp_files(tmp_path) == []
    assert sorted(p.name for p in store.run_dir(config).iterdir()) == sorted(
        [CONFIG_FILE, MODEL_FILE, RESULT_FILE]
    )


def test_failed_atomic_write_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "result.json"
    atomic_write_json(target, {"version": 1})

    def no_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(store_module.os, "replace", no_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_json(target, {"version": 2})
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"version": 1}
    assert _temp_files(tmp_path) == []


def test_unpicklable_checkpoint_writes_nothing(tmp_path):
    with pytest.raises(Exception):
        atomic_torch_save({"fn": lambda: 0}, tmp_path / "checkpoint.pt")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- weights_only loading


class Payload:
    """A custom class: pickling it would run arbitrary code on load, so weights_only must refuse it."""

    def __init__(self):
        self.value = 42


def test_checkpoint_with_custom_object_is_refused(tmp_path):
    path = tmp_path / CHECKPOINT_FILE
    torch.save({"epoch": 1, "model": {"w": torch.ones(1)}, "extra": Payload()}, path)
    # torch.load without weights_only would happily run the pickle: the store must not.
    with pytest.raises(pickle.UnpicklingError):
        safe_torch_load(path)
    assert RunStore.load_checkpoint(tmp_path) is None  # ignored: training starts over


def test_model_with_custom_object_is_refused(store, config):
    store.get_or_run(config, fake_training([]))
    torch.save({"weight": torch.ones(3), "hook": Payload()}, store.run_dir(config) / MODEL_FILE)
    with pytest.raises(pickle.UnpicklingError):
        store.load_state_dict(config)


def test_checkpoint_with_plain_state_loads(tmp_path):
    state = {
        "epoch": 2,
        "model": {"w": torch.randn(3)},
        "generator": torch.Generator().manual_seed(0).get_state(),
        "temperature": {"bit_generator": {"state": {"state": 2**127 + 5, "inc": 3}, "bit_generator": "PCG64"}},
        "history": [{"epoch": 1, "tau_mean": float("nan"), "energy_source": "estimated"}],
    }
    RunStore.save_checkpoint(tmp_path, state)
    loaded = RunStore.load_checkpoint(tmp_path)
    assert loaded["epoch"] == 2 and torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert loaded["temperature"]["bit_generator"]["state"]["state"] == 2**127 + 5
    assert RunStore.load_checkpoint(tmp_path / "missing") is None


def test_torn_checkpoint_is_ignored(tmp_path):
    (tmp_path / CHECKPOINT_FILE).write_bytes(b"PK\x03\x04 torn")
    assert RunStore.load_checkpoint(tmp_path) is None


# --------------------------------------------------------------------------- two processes, one training


def _ask_for_run(root: str, config_dict: dict, counter: str, barrier, results) -> None:
    """Child process: wait for the other child, then ask the store for the same run."""
    run_store = RunStore(root)
    config = RunConfig.from_dict(config_dict)

    def train(run_dir):
        with open(counter, "a") as f:  # O_APPEND: one line per training, from whichever process
            f.write(f"{os.getpid()}\n")
        time.sleep(1.0)  # long enough for the other process to arrive and wait on the lock
        RunStore.save_model(run_dir, {"w": torch.ones(1)})
        return {"trained_by": os.getpid()}

    barrier.wait(timeout=60)
    record = run_store.get_or_run(config, train)
    results.put((os.getpid(), record, config.key))


def test_two_processes_train_the_same_run_once(tmp_path, config):
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    results = ctx.Queue()
    counter = tmp_path / "counter.txt"
    root = tmp_path / "store"
    procs = [
        ctx.Process(target=_ask_for_run, args=(str(root), config.to_dict(), str(counter), barrier, results))
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    got = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    trainers = counter.read_text().split()
    assert len(trainers) == 1  # trained once
    records = [record for _, record, _ in got]
    assert records[0] == records[1] == {"trained_by": int(trainers[0])}
    assert {pid for pid, _, _ in got} == {p.pid for p in procs}
    # The key is stable across processes (each has its own hash seed): both found the parent's run.
    assert [key for _, _, key in got] == [config.key, config.key]
    assert RunStore(root).is_finished(config)

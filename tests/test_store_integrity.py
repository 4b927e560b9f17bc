"""The run store never returns wrong numbers: each test damages a real run folder of a tiny run (64 digits,
two epochs, about a second on one core) and checks that the damage is caught, reported by file name, set
aside and trained again, or, for a checkpoint, ignored."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from greenkd_utils.core.config import AugmentSettings, TemperatureSpec, TrainSettings
from greenkd_utils.runs import store as store_module
from greenkd_utils.runs.lifecycle import train
from greenkd_utils.runs.safe_load import CorruptRunError, CorruptRunWarning, safe_torch_load
from greenkd_utils.runs.seal import INTEGRITY_FIELD
from greenkd_utils.runs.store import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    CORRUPT_MARK,
    MODEL_FILE,
    RESULT_FILE,
    RunStore,
)

TINY = TrainSettings(epochs=2, batch_size=32, lr=0.05, milestones=(1,), warmup_epochs=0,
                     augment=AugmentSettings(crop_padding=0, flip=False, rotation_deg=0.0))


def tiny(config):
    teacher = tiny(config.teacher) if config.teacher is not None else None
    return config.replace(train=TINY, train_subset=64, test_subset=32, teacher=teacher)


@pytest.fixture
def kd(smoke):
    return tiny(smoke.kd_config("digits", 0, "hkd", TemperatureSpec.fixed(4)))


class Trainings:
    """The runs trained (not loaded) into a store since the last :meth:`clear`, read from its training log."""

    def __init__(self, store: RunStore):
        self.store, self.seen = store, 0

    def clear(self) -> None:
        self.seen = len(self.store.training_log())

    def started(self) -> list:
        return [e for e in self.store.training_log()[self.seen:] if e["event"] == "started"]

    def names(self) -> list:
        return [e["name"] for e in self.started()]


@pytest.fixture
def trainings(store) -> Trainings:
    return Trainings(store)


def run(config, store):
    return train(config, store, device="cpu", progress=False)


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def corrupt_folders(store: RunStore, config):
    return sorted(store.runs_dir.glob(f"{store.run_dir(config).name}{CORRUPT_MARK}*"))


def names(path: Path) -> str:
    return re.escape(str(path))


def test_sealed_run_records_the_digest_of_every_file(store, kd):
    teacher = run(kd.teacher, store)
    run_dir = store.run_dir(kd.teacher)
    stored = json.loads((run_dir / RESULT_FILE).read_text())
    seal = stored[INTEGRITY_FIELD]
    assert seal["algorithm"] == "sha256" and seal["key"] == kd.teacher.key
    assert sorted(seal["files"]) == [CONFIG_FILE, MODEL_FILE]
    assert all(re.fullmatch("[0-9a-f]{64}", d) for d in [*seal["files"].values(), seal["record"]])
    # Callers never see the seal, and a finished run keeps no checkpoint.
    assert INTEGRITY_FIELD not in store.load_result(kd.teacher)
    assert INTEGRITY_FIELD not in teacher.to_dict()
    assert sorted(p.name for p in run_dir.iterdir()) == [CONFIG_FILE, MODEL_FILE, RESULT_FILE]


def test_record_copied_from_another_run_is_retrained(store, kd, trainings):
    other = kd.teacher.replace(seed=1)
    run(kd.teacher, store)
    run(other, store)
    target = store.run_dir(kd.teacher) / RESULT_FILE
    shutil.copyfile(store.run_dir(other) / RESULT_FILE, target)
    trainings.clear()
    with pytest.warns(CorruptRunWarning, match=names(target)):
        result = run(kd.teacher, store)
    assert trainings.names() == [kd.teacher.name]
    assert result.key == kd.teacher.key and result.config == kd.teacher
    (aside,) = corrupt_folders(store, kd.teacher)
    assert json.loads((aside / RESULT_FILE).read_text())["key"] == other.key  # kept for a look, not deleted


def test_whole_run_folder_copied_under_another_key_is_retrained(store, kd, trainings):
    other = kd.teacher.replace(seed=1)
    run(other, store)
    shutil.copytree(store.run_dir(other), store.run_dir(kd.teacher))
    trainings.clear()
    with pytest.warns(CorruptRunWarning, match="not of this folder's run"):
        assert store.load_result(kd.teacher) is None
    assert run(kd.teacher, store).key == kd.teacher.key
    assert trainings.names() == [kd.teacher.name]


def test_edited_accuracy_is_retrained(store, kd, trainings):
    first = run(kd.teacher, store)
    path = store.run_dir(kd.teacher) / RESULT_FILE
    stored = json.loads(path.read_text())
    stored["test_accuracy"] = 99.9
    path.write_text(json.dumps(stored, indent=2, sort_keys=True))
    trainings.clear()
    with pytest.warns(CorruptRunWarning, match=names(path) + ".*changed after the run finished"):
        again = run(kd.teacher, store)
    assert trainings.names() == [kd.teacher.name]
    assert again.test_accuracy == first.test_accuracy != 99.9  # the same seed on the CPU trains the same run


@pytest.mark.parametrize("field", ["test_accuracy", "config", "energy"])
def test_record_missing_a_field_is_corrupt(store, kd, field):
    run(kd.teacher, store)
    path = store.run_dir(kd.teacher) / RESULT_FILE
    stored = json.loads(path.read_text())
    del stored[field]
    path.write_text(json.dumps(stored))
    with pytest.warns(CorruptRunWarning, match=names(path)):
        assert store.load_result(kd.teacher) is None
    assert not store.is_finished(kd.teacher) and len(corrupt_folders(store, kd.teacher)) == 1


def test_earlier_record_missing_a_required_field_is_corrupt(store, kd):
    run(kd.teacher, store)
    path = store.run_dir(kd.teacher) / RESULT_FILE
    stored = json.loads(path.read_text())
    del stored[INTEGRITY_FIELD], stored["versions"]
    path.write_text(json.dumps(stored))
    with pytest.warns(CorruptRunWarning, match=names(path) + ".*versions"):
        assert store.load_result(kd.teacher) is None


def test_flipped_teacher_weights_are_retrained_before_the_student_uses_them(store, kd, trainings):
    run(kd.teacher, store)
    model_path = store.run_dir(kd.teacher) / MODEL_FILE
    good_weights = safe_torch_load(model_path)
    flip_byte(model_path, model_path.stat().st_size // 2)
    trainings.clear()
    with pytest.warns(CorruptRunWarning, match=names(model_path) + ".*SHA-256"):
        student = run(kd, store)
    assert trainings.names() == [kd.teacher.name, kd.name]
    retrained = store.load_state_dict(kd.teacher)
    assert all(torch.equal(retrained[k], good_weights[k]) for k in good_weights)  # what the student learnt from
    assert student.key == kd.key and store.is_finished(kd)


def test_truncated_teacher_weights_are_retrained_and_kd_succeeds(store, kd, trainings):
    run(kd.teacher, store)
    model_path = store.run_dir(kd.teacher) / MODEL_FILE
    model_path.write_bytes(model_path.read_bytes()[:1000])
    trainings.clear()
    with pytest.warns(CorruptRunWarning, match=names(model_path)):
        student = run(kd, store)
    assert trainings.names() == [kd.teacher.name, kd.name]
    assert student.test_accuracy == student.history[-1]["test_accuracy"]
    assert store.load_state_dict(kd.teacher)  # the retrained teacher's weights read back
    assert len(corrupt_folders(store, kd.teacher)) == 1


def test_damaged_weights_raise_an_error_that_names_the_file_and_the_fix(store, kd):
    run(kd.teacher, store)
    run_dir = store.run_dir(kd.teacher)
    model_path = run_dir / MODEL_FILE
    model_path.write_bytes(model_path.read_bytes()[:1000])
    with pytest.warns(CorruptRunWarning), pytest.raises(CorruptRunError) as caught:
        store.load_state_dict(kd.teacher)
    message = str(caught.value)
    assert str(model_path) in message and "moved aside" in message and "weights_only" not in message
    # Read directly, an unreadable file says which folder to delete, never to turn weights_only off.
    (aside,) = corrupt_folders(store, kd.teacher)
    with pytest.raises(CorruptRunError) as caught:
        safe_torch_load(aside / MODEL_FILE)
    message = str(caught.value)
    assert str(aside / MODEL_FILE) in message and f"Delete the run folder {aside}" in message
    assert "weights_only" not in message


def test_other_files_of_a_run_are_sealed_too(store, kd):
    def train(run_dir):
        RunStore.save_model(run_dir, {"w": torch.ones(2)})
        torch.save({"images": torch.zeros(2, 1, 8, 8, dtype=torch.uint8)}, run_dir / "samples.pt")
        return {"test_accuracy": 50.0}

    config = kd.teacher
    store.get_or_run(config, train)
    samples = store.run_dir(config) / "samples.pt"
    flip_byte(samples, samples.stat().st_size // 2)
    with pytest.warns(CorruptRunWarning, match=names(samples)):
        assert store.load_result(config) is None
    # A sealed file that disappears is as bad as a changed one.
    store.get_or_run(config, train)
    samples.unlink()
    with pytest.warns(CorruptRunWarning, match=names(samples) + " is missing"):
        assert not store.is_finished(config)


def _interrupt_after_first_checkpoint(config, store, monkeypatch):
    run_dir = store.run_dir(config)
    real_save = RunStore.save_checkpoint

    def interrupting(directory, state):
        real_save(directory, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(RunStore, "save_checkpoint", staticmethod(interrupting))
    with pytest.raises(KeyboardInterrupt):
        run(config, store)
    monkeypatch.setattr(RunStore, "save_checkpoint", staticmethod(real_save))
    return run_dir / CHECKPOINT_FILE


def test_flipped_checkpoint_is_ignored_and_the_run_starts_over(store, kd, monkeypatch, trainings):
    run(kd.teacher, store)
    checkpoint = _interrupt_after_first_checkpoint(kd, store, monkeypatch)
    state = RunStore.load_checkpoint(checkpoint.parent)
    assert state["epoch"] == 0
    # Flip a byte inside the saved training state, where only the digest can tell.
    flip_byte(checkpoint, state_offset(checkpoint.read_bytes(), state) + 200)
    with pytest.warns(CorruptRunWarning, match=names(checkpoint) + " does not match the SHA-256"):
        assert RunStore.load_checkpoint(checkpoint.parent) is None

    trainings.clear()
    with pytest.warns(CorruptRunWarning, match=names(checkpoint)):
        result = run(kd, store)
    assert [(e["name"], e["from_epoch"]) for e in trainings.started()] == [(kd.name, 0)]  # not from the damaged epoch
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert not checkpoint.exists()


def state_offset(file_bytes: bytes, state) -> int:
    """Where the serialized training state starts inside a checkpoint file."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    offset = file_bytes.find(buffer.getvalue()[:512])
    assert offset > 0
    return offset


def test_unreadable_checkpoint_is_ignored_with_a_warning(store, kd, monkeypatch):
    run(kd.teacher, store)
    checkpoint = _interrupt_after_first_checkpoint(kd, store, monkeypatch)
    checkpoint.write_bytes(checkpoint.read_bytes()[:300])
    with pytest.warns(CorruptRunWarning, match=names(checkpoint)):
        result = run(kd, store)
    assert [h["epoch"] for h in result.history] == [1, 2] and not checkpoint.exists()


def test_checkpoint_of_an_earlier_version_still_resumes(tmp_path):
    state = {"epoch": 3, "model": {"w": torch.arange(4.0)}}
    torch.save(state, tmp_path / CHECKPOINT_FILE)  # no digest: written before checkpoints carried one
    loaded = RunStore.load_checkpoint(tmp_path)
    assert loaded["epoch"] == 3 and torch.equal(loaded["model"]["w"], state["model"]["w"])


def test_stale_temporary_files_are_removed_on_the_next_access(store, kd):
    run(kd.teacher, store)
    run_dir = store.run_dir(kd.teacher)
    leftovers = [run_dir / ".model.pt.k1ll3d.tmp", run_dir / ".result.json.x8a2.tmp"]
    for path in leftovers:
        path.write_bytes(b"half a write")
    # While another process holds the run's lock, its temporary files may be writes in flight: left alone.
    with store.lock(kd.teacher):
        assert store.load_result(kd.teacher) is not None
        assert all(p.exists() for p in leftovers)
    assert store.load_result(kd.teacher) is not None
    assert not any(p.exists() for p in leftovers)


def test_temporary_files_of_an_unfinished_run_are_removed_before_it_trains(store, kd):
    run_dir = store.run_dir(kd.teacher)
    run_dir.mkdir(parents=True)
    leftover = run_dir / ".checkpoint.pt.abc123.tmp"
    leftover.write_bytes(b"torn")
    run(kd.teacher, store)
    assert not leftover.exists()
    assert sorted(p.name for p in run_dir.iterdir()) == [CONFIG_FILE, MODEL_FILE, RESULT_FILE]


def test_finished_run_keeps_no_checkpoint(store, kd):
    run(kd.teacher, store)
    run_dir = store.run_dir(kd.teacher)
    assert not (run_dir / CHECKPOINT_FILE).exists()
    # A kill between writing the result and deleting the checkpoint: the next access deletes it.
    RunStore.save_checkpoint(run_dir, {"epoch": 1})
    assert store.is_finished(kd.teacher)
    assert not (run_dir / CHECKPOINT_FILE).exists()


def test_record_of_an_earlier_version_loads_and_is_sealed(store, kd, trainings):
    first = run(kd.teacher, store)
    path = store.run_dir(kd.teacher) / RESULT_FILE
    stored = json.loads(path.read_text())
    del stored[INTEGRITY_FIELD]
    path.write_text(json.dumps(stored, indent=2, sort_keys=True))
    trainings.clear()
    again = run(kd.teacher, store)
    assert trainings.names() == [] and again.test_accuracy == first.test_accuracy
    assert json.dumps(store.load_result(kd.teacher), sort_keys=True) == json.dumps(stored, sort_keys=True)
    assert INTEGRITY_FIELD in json.loads(path.read_text())  # sealed on its first sound load
    assert store.load_state_dict(kd.teacher).keys() == first.load_model(store).state_dict().keys()


def test_record_of_an_earlier_version_with_torn_weights_is_retrained(store, kd, trainings):
    run(kd.teacher, store)
    run_dir = store.run_dir(kd.teacher)
    stored = json.loads((run_dir / RESULT_FILE).read_text())
    del stored[INTEGRITY_FIELD]
    (run_dir / RESULT_FILE).write_text(json.dumps(stored))
    (run_dir / MODEL_FILE).write_bytes((run_dir / MODEL_FILE).read_bytes()[:500])
    trainings.clear()
    with pytest.warns(CorruptRunWarning, match=names(run_dir / MODEL_FILE)):
        run(kd.teacher, store)
    assert trainings.names() == [kd.teacher.name]


def test_record_of_an_earlier_version_without_its_weights_is_retrained(store, kd, trainings):
    run(kd.teacher, store)
    run_dir = store.run_dir(kd.teacher)
    stored = json.loads((run_dir / RESULT_FILE).read_text())
    del stored[INTEGRITY_FIELD]
    (run_dir / RESULT_FILE).write_text(json.dumps(stored))
    (run_dir / MODEL_FILE).unlink()
    trainings.clear()
    with pytest.warns(CorruptRunWarning, match=names(run_dir / MODEL_FILE)):
        run(kd.teacher, store)
    assert trainings.names() == [kd.teacher.name]


def test_corrupt_run_is_left_in_place_while_another_process_holds_its_lock(store, kd):
    run(kd.teacher, store)
    path = store.run_dir(kd.teacher) / RESULT_FILE
    path.write_text(path.read_text().replace('"test_accuracy"', '"test_accuracy_"'))
    with store.lock(kd.teacher):
        with pytest.warns(CorruptRunWarning, match="another process"):
            assert store.load_result(kd.teacher) is None  # never returned, even when it cannot be moved
        assert path.exists() and corrupt_folders(store, kd.teacher) == []
    with pytest.warns(CorruptRunWarning, match="moved aside"):
        assert store.load_result(kd.teacher) is None
    assert len(corrupt_folders(store, kd.teacher)) == 1


def test_browsing_skips_corrupt_and_set_aside_runs(store, kd):
    run(kd.teacher, store)
    other = kd.teacher.replace(seed=1)
    run(other, store)
    path = store.run_dir(other) / RESULT_FILE
    path.write_text(path.read_text().replace('"test_accuracy": ', '"test_accuracy": 1'))
    with pytest.warns(CorruptRunWarning, match=names(path)):
        assert [r["key"] for r in store.finished_records()] == [kd.teacher.key]
    with pytest.warns(CorruptRunWarning):
        store.load_result(other)  # sets it aside
    assert [r["key"] for r in store.finished_records()] == [kd.teacher.key]


def test_store_that_cannot_be_written_still_reads_sealed_and_earlier_records(store, kd, monkeypatch):
    run(kd.teacher, store)
    other = kd.teacher.replace(seed=1)
    run(other, store)
    path = store.run_dir(other) / RESULT_FILE
    stored = json.loads(path.read_text())
    del stored[INTEGRITY_FIELD]
    path.write_text(json.dumps(stored))

    def read_only(*args, **kwargs):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(store_module.FileLock, "acquire", read_only)
    monkeypatch.setattr(store_module.os, "replace", read_only)
    assert store.load_result(kd.teacher)["key"] == kd.teacher.key
    assert store.load_result(other)["key"] == other.key  # read unsealed
    assert INTEGRITY_FIELD not in json.loads(path.read_text())
    assert store.load_state_dict(other)

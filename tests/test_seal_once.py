"""A run's seal is verified once per process: a second lookup of an unchanged run reads no file's contents,
and a file changed between two lookups (same size, bytes flipped in place, or a record edited) is still
caught. The run is the tiny two-epoch teacher of tests/test_store_integrity.py."""

from __future__ import annotations

import builtins
import io
import json
import warnings
from pathlib import Path

import pytest

from greenkd_utils.runs.safe_load import CorruptRunWarning
from greenkd_utils.runs.store import MODEL_FILE, RESULT_FILE, RunStore
from tests.test_store_integrity import corrupt_folders, flip_byte, kd, run  # noqa: F401  (kd is a fixture)


class ReadsUnder:
    """Every file opened under ``folder`` while it is installed (builtins.open, io.open, pathlib)."""

    def __init__(self, folder: Path, monkeypatch):
        self.folder, self.opened = Path(folder).resolve(), []
        real = builtins.open

        def spying_open(file, *args, **kwargs):
            path = Path(file).resolve() if isinstance(file, (str, Path)) else None
            if path is not None and self.folder in path.parents:
                self.opened.append(path)
            return real(file, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", spying_open)
        monkeypatch.setattr(io, "open", spying_open)


def test_second_lookup_reads_no_file_and_returns_the_same_record(store: RunStore, kd, monkeypatch):
    run(kd.teacher, store)
    fresh = RunStore(store.root)  # another store object on the same folder: the memory is the process's
    first = fresh.load_result(kd.teacher)
    reads = ReadsUnder(store.run_dir(kd.teacher), monkeypatch)
    second = fresh.load_result(kd.teacher)
    assert reads.opened == []
    assert second == first
    second["test_accuracy"] = -1.0  # a caller's copy: changing it changes nothing the store remembers
    assert store.load_result(kd.teacher)["test_accuracy"] == first["test_accuracy"]
    assert reads.opened == []


def test_first_lookup_in_a_process_reads_the_files(store: RunStore, kd, monkeypatch):
    run(kd.teacher, store)
    from greenkd_utils.runs.seal import VERIFIED_SEALS

    VERIFIED_SEALS.forget(store.run_dir(kd.teacher))  # as a new process finds it
    reads = ReadsUnder(store.run_dir(kd.teacher), monkeypatch)
    assert store.load_result(kd.teacher) is not None
    assert {p.name for p in reads.opened} >= {RESULT_FILE, MODEL_FILE}


def test_weights_flipped_between_two_lookups_are_caught(store: RunStore, kd):
    run(kd.teacher, store)
    assert store.load_result(kd.teacher) is not None
    model = store.run_dir(kd.teacher) / MODEL_FILE
    size = model.stat().st_size
    flip_byte(model, size // 2)  # same size, changed in place
    assert model.stat().st_size == size
    with pytest.warns(CorruptRunWarning, match="does not match the SHA-256"):
        assert store.load_result(kd.teacher) is None
    assert len(corrupt_folders(store, kd.teacher)) == 1


def test_record_edited_between_two_lookups_is_caught(store: RunStore, kd):
    run(kd.teacher, store)
    assert store.load_result(kd.teacher) is not None
    path = store.run_dir(kd.teacher) / RESULT_FILE
    stored = json.loads(path.read_text())
    stored["test_accuracy"] = 100.0
    path.write_text(json.dumps(stored))
    with pytest.warns(CorruptRunWarning, match="changed after the run finished"):
        assert store.load_result(kd.teacher) is None


def test_weights_replaced_by_a_file_of_the_same_size_and_time_are_caught(store: RunStore, kd):
    """Replacing a sealed file keeps nothing of its old stat but what a copy can fake (size, mtime): the
    change time and inode still differ."""
    import os
    import shutil

    run(kd.teacher, store)
    assert store.load_result(kd.teacher) is not None
    model = store.run_dir(kd.teacher) / MODEL_FILE
    before = model.stat()
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    forged = model.with_name("forged.bin")
    forged.write_bytes(bytes(data))
    os.utime(forged, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(forged, model)
    assert (model.stat().st_size, model.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert store.load_result(kd.teacher) is None
    assert any(issubclass(w.category, CorruptRunWarning) for w in caught)
    shutil.rmtree(store.root, ignore_errors=True)

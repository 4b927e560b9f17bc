"""Where a run is cached: one folder per config hash, written so that a crash loses at most an epoch, and read
so that a damaged or foreign file is never returned as a result.

Layout of ``<root>/runs/<name>-<key>/``:

- ``config.json``    the run's config, written when training starts
- ``checkpoint.pt``  the state after the last finished epoch (resumed from after an interruption)
- ``model.pt``       the final weights (a state_dict); a task may write more files (data-free KD: samples)
- ``result.json``    the result record; written last, atomically. Its presence is what
                     "finished" means, so a half-written run is never read as finished.

and ``<root>/training_log.jsonl``: one line per start of a training (which run, from which epoch, which
process on which host), appended by every process that trains into the store.

Every file is written to a temporary name in the same folder and moved into
place with ``os.replace``, which is atomic on POSIX and Windows. A file lock per
run makes two processes that ask for the same run (say, the same teacher from
two notebooks) train it once: the second waits, then loads.

Integrity. A finished run is *sealed* (:mod:`greenkd_utils.runs.seal`): ``result.json`` carries the SHA-256
of the record and of every other file in the run folder except :data:`RESUME_FILES`. Every read
(:meth:`RunStore.load_result`, ``is_finished``, ``get_or_run``, ``load_state_dict``, ``finished_records``)
checks the seal first, and the record a caller gets never contains the ``integrity`` field. A run is
*corrupt* when its record cannot be read, is not a record, names another run (its ``key``, its config's hash
or the seal's ``key`` is not the folder's), fails its record digest (an edited number), or a sealed file is
missing or fails its digest (flipped or truncated bytes). A corrupt run is never returned: a
:class:`~greenkd_utils.runs.safe_load.CorruptRunWarning` names the file, the folder is renamed to
``<run folder>.corrupt-<UTC time>`` (kept for inspection, never deleted) and the run counts as unfinished, so
``get_or_run`` trains it again. Weights are checked against their digest before ``torch.load`` reads them.

Records written before seals existed (no ``integrity`` field) are *legacy*: they must still name this run
and hold :data:`REQUIRED_FIELDS`, and their ``.pt`` files must load with ``weights_only=True``; the first
load that finds them sound seals them (rewriting ``result.json`` with the field added), so later reads check
digests. A store that cannot be written to (read-only) reads them unsealed.

Checkpoints carry their own digest: ``checkpoint.pt`` holds the serialized training state as bytes next to
its SHA-256 (:data:`CHECKPOINT_FORMAT`), so a copied checkpoint stays verifiable. One that fails its digest
or cannot be read is ignored with a warning naming it, and the run starts over from its first epoch (the
next epoch's checkpoint replaces the bad one). Checkpoints written before this format load unverified.

Housekeeping under the run's lock, never while another process holds it: temporary files that a killed
write left behind are removed on the next access to the run, and a finished run loses a leftover
``checkpoint.pt``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import io
import json
import logging
import os
import socket
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import torch
from filelock import FileLock, Timeout

from greenkd_utils.core.config import RunConfig, config_key
from greenkd_utils.runs.safe_load import (
    CorruptRunError,
    load_tensors,
    retrain_advice,
    safe_torch_load,
    warn_corrupt,
)
from greenkd_utils.runs.seal import (
    DIGEST_ALGORITHM,
    INTEGRITY_FIELD,
    VERIFIED_SEALS,
    identity_problem,
    seal_problem,
    sealed_record,
)

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"
MODEL_FILE = "model.pt"
CHECKPOINT_FILE = "checkpoint.pt"
CONFIG_FILE = "config.json"
# At the store's root: one JSON line per start of a training (see RunStore.log_training).
TRAINING_LOG = "training_log.jsonl"

# Files that only serve to continue training. They are not part of a finished run's seal because they may be
# deleted later: the checkpoint, and the final state that successive halving keeps for its next rung.
RESUME_FILES = frozenset({CHECKPOINT_FILE, "resume_state.pt"})

CHECKPOINT_FORMAT = "greenkd-checkpoint-sha256"
# Every record any task writes has these; a legacy record without one of them is not a finished run.
REQUIRED_FIELDS = ("key", "name", "config", "energy", "flops", "history", "versions", "finished_at")

TEMP_SUFFIX = ".tmp"  # atomic_write_bytes writes ``.<name>.<random>.tmp`` before the rename
CORRUPT_MARK = ".corrupt-"


# ---------------------------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------------------------
def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


def _torch_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def atomic_torch_save(obj: Any, path: Path) -> None:
    atomic_write_bytes(path, _torch_bytes(obj))


# ---------------------------------------------------------------------------------------------
# What a look at a run folder finds
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Inspection:
    record: Optional[Dict[str, Any]] = None  # without the integrity field; None: unfinished or corrupt
    problem: Optional[str] = None  # why the run is corrupt (names the file)
    seal: Optional[Dict[str, Any]] = None  # None for an unfinished or legacy run

    @property
    def finished(self) -> bool:
        return self.record is not None


@dataclasses.dataclass
class _Opened(_Inspection):
    moved_to: Optional[Path] = None  # where a corrupt run was set aside


def _is_temporary(name: str) -> bool:
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


class RunStore:
    """A folder of finished and in-progress runs, keyed by ``RunConfig.key``."""

    resume_files = RESUME_FILES

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()
        self.runs_dir = self.root / "runs"
        self.runs_dir.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"RunStore({str(self.root)!r})"

    def run_dir(self, config: RunConfig) -> Path:
        return self.runs_dir / f"{config.name}-{config.key}"

    def is_finished(self, config: RunConfig) -> bool:
        """Whether the run has a sound result record (a corrupt one counts as unfinished)."""
        return self.load_result(config) is not None

    def load_result(self, config: RunConfig) -> Optional[Dict[str, Any]]:
        """The finished, verified result record, or None. A corrupt run is set aside and counts as unfinished."""
        return self._open(config).record

    def lock(self, config: RunConfig) -> FileLock:
        return FileLock(str(self.runs_dir / f".{config.name}-{config.key}.lock"))

    def get_or_run(self, config: RunConfig, train: Callable[[Path], Dict[str, Any]]) -> Dict[str, Any]:
        """Return the finished record of ``config``, training it with ``train(run_dir)`` on a miss.

        ``train`` must save the weights (``save_model``) and return the result record;
        the store seals it and writes it last.
        """
        cached = self.load_result(config)
        if cached is not None:
            log.info("run store hit: %s", config.name)
            return cached
        with self.lock(config):
            # Another process may have finished it while we waited; and under the lock leftovers are ours to tidy.
            opened = self._open(config, have_lock=True)
            if opened.record is not None:
                log.info("run store hit after waiting for the lock: %s", config.name)
                return opened.record
            run_dir = self.run_dir(config)
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(run_dir / CONFIG_FILE, config.to_dict())
            record = train(run_dir)
            if not isinstance(record, dict):
                raise TypeError(f"a run's training must return its record as a dict; got {type(record).__name__}")
            if INTEGRITY_FIELD in record:
                raise ValueError(f"the record field {INTEGRITY_FIELD!r} is the store's own; rename it in the record")
            self._write_sealed(config.key, run_dir, record)
            # The checkpoint is only needed to resume; a finished run keeps its final weights.
            (run_dir / CHECKPOINT_FILE).unlink(missing_ok=True)
            return record

    # -- who trained what, when --------------------------------------------------------------
    def log_training(self, config: RunConfig, event: str, **fields) -> None:
        """Append one line to :data:`TRAINING_LOG`: every start of a training (``from_epoch`` > 0 when it
        resumed), by which process on which host. Appends of one short line are atomic, so concurrent
        processes never interleave; the log is what shows that no run was trained twice."""
        entry = {"time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds"), "event": event,
                 "key": config.key, "name": config.name, "host": socket.gethostname(), "pid": os.getpid(), **fields}
        line = (json.dumps(entry, sort_keys=True) + "\n").encode()
        fd = os.open(self.root / TRAINING_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def training_log(self) -> List[Dict[str, Any]]:
        """Every line of :data:`TRAINING_LOG`, oldest first (empty if nothing was trained into this store)."""
        path = self.root / TRAINING_LOG
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    # -- checkpoints and weights -----------------------------------------------------------
    @staticmethod
    def save_checkpoint(run_dir: Path, state: Dict[str, Any]) -> None:
        payload = _torch_bytes(state)
        envelope = {
            "format": CHECKPOINT_FORMAT,
            DIGEST_ALGORITHM: hashlib.sha256(payload).hexdigest(),
            "state": torch.frombuffer(bytearray(payload), dtype=torch.uint8),
        }
        atomic_torch_save(envelope, Path(run_dir) / CHECKPOINT_FILE)

    @staticmethod
    def load_checkpoint(run_dir: Path) -> Optional[Dict[str, Any]]:
        """The last epoch's training state, or None (no checkpoint, or one that fails its checks: warned)."""
        path = Path(run_dir) / CHECKPOINT_FILE
        if not path.is_file():
            return None
        try:
            stored = safe_torch_load(path)
            if not (isinstance(stored, dict) and stored.get("format") == CHECKPOINT_FORMAT):
                return stored  # written before checkpoints carried a digest: weights_only is the check
            payload = stored["state"].numpy().tobytes()
            if hashlib.sha256(payload).hexdigest() != stored[DIGEST_ALGORITHM]:
                raise CorruptRunError(f"{path} does not match the SHA-256 it was saved with (damaged bytes)")
            return load_tensors(io.BytesIO(payload), path)
        except Exception as err:  # a torn or foreign file: start over rather than crash or resume from garbage
            if isinstance(err, CorruptRunError):
                reason = err.reason
            else:
                reason = f"{path} is malformed ({type(err).__name__}: {err})"
            warn_corrupt(f"ignoring the checkpoint: {reason}; the run starts over from its first epoch")
            return None

    @staticmethod
    def save_model(run_dir: Path, state_dict: Dict[str, torch.Tensor]) -> None:
        atomic_torch_save({k: v.detach().cpu() for k, v in state_dict.items()}, Path(run_dir) / MODEL_FILE)

    @staticmethod
    def save_artifact(run_dir: Path, name: str, obj: Any) -> None:
        """Another file of tensors a run keeps (sealed with its record like the weights)."""
        atomic_torch_save(obj, Path(run_dir) / name)

    def load_state_dict(self, config: RunConfig) -> Dict[str, torch.Tensor]:
        """The final weights of a finished run, checked against their digest before ``torch.load`` reads them."""
        return self.load_artifact(config, MODEL_FILE)

    def load_artifact(self, config: RunConfig, name: str) -> Any:
        """A file a finished run wrote (weights, samples), checked against its digest before ``torch.load``
        (``weights_only=True``) reads it."""
        opened = self._open(config)
        run_dir = self.run_dir(config)
        if opened.record is None:
            if opened.moved_to is not None:
                raise CorruptRunError(
                    opened.problem,
                    f"The run was moved aside to {opened.moved_to}; ask for it again "
                    f"(runs.lifecycle.train) to train it anew",
                )
            if opened.problem is not None:
                raise CorruptRunError(opened.problem, retrain_advice(run_dir))
            raise FileNotFoundError(f"run {config.name} ({config.key}) is not finished in {self.root}")
        path = run_dir / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing from a finished run. {retrain_advice(run_dir)}")
        data = path.read_bytes()
        expected = (opened.seal or {}).get("files", {}).get(name)
        if expected is not None and hashlib.sha256(data).hexdigest() != expected:
            raise CorruptRunError(
                f"{path} does not match the SHA-256 recorded when the run finished", retrain_advice(run_dir)
            )
        return load_tensors(io.BytesIO(data), path)

    def finished_records(self) -> Iterator[Dict[str, Any]]:
        """Every sound finished record in the store (for browsing in a notebook); corrupt ones are warned about."""
        for path in sorted(self.runs_dir.glob(f"*/{RESULT_FILE}")):
            run_dir = path.parent
            if CORRUPT_MARK in run_dir.name:
                continue
            found = self._inspect(run_dir.name.rpartition("-")[2], run_dir)
            if found.problem is not None:
                warn_corrupt(f"{found.problem}; not listed (asking for the run sets it aside and trains it again)")
            elif found.record is not None:
                yield found.record

    # -- integrity --------------------------------------------------------------------------
    def _sealed_files(self, run_dir: Path) -> List[str]:
        """Files of a run folder that its seal covers, as paths relative to the folder."""
        names = []
        for path in sorted(run_dir.rglob("*")):
            relative = path.relative_to(run_dir)
            if any(part.startswith(".") for part in relative.parts) or not path.is_file():
                continue
            name = relative.as_posix()
            if name != RESULT_FILE and name not in self.resume_files:
                names.append(name)
        return names

    def _write_sealed(self, key: str, run_dir: Path, record: Dict[str, Any]) -> None:
        atomic_write_json(run_dir / RESULT_FILE, sealed_record(key, run_dir, self._sealed_files(run_dir), record))

    def _inspect(self, key: str, run_dir: Path) -> _Inspection:
        """Read and check a run folder (once per process while its files keep their stats); changes nothing."""
        path = run_dir / RESULT_FILE
        verified = VERIFIED_SEALS.lookup(run_dir, RESULT_FILE)
        if verified is not None:
            return _Inspection(record=verified[0], seal=verified[1])
        if not path.is_file():
            return _Inspection()
        stat_before = VERIFIED_SEALS.signature(run_dir, RESULT_FILE, {})[0]
        try:
            record = json.loads(path.read_bytes())
        except (OSError, ValueError) as err:  # ValueError: bad JSON, and bytes that are not text
            return _Inspection(problem=f"{path} cannot be read ({type(err).__name__}: {err})")
        if not isinstance(record, dict):
            return _Inspection(problem=f"{path} is not a result record (it holds a {type(record).__name__})")
        seal = record.pop(INTEGRITY_FIELD, None)
        signature = None
        if isinstance(seal, dict) and isinstance(seal.get("files"), dict):
            signature = VERIFIED_SEALS.signature(run_dir, RESULT_FILE, seal)  # before the sealed files are read
            if signature[0] != stat_before:  # result.json was replaced while it was read
                signature = None
        problem = identity_problem(key, path, record)
        if problem is None:
            problem = self._legacy_problem(key, run_dir, record) if seal is None else seal_problem(
                key, run_dir, path, record, seal)
        if problem is not None:
            return _Inspection(problem=problem)
        if signature is not None:
            VERIFIED_SEALS.remember(run_dir, RESULT_FILE, record, seal, signature)
        return _Inspection(record=record, seal=seal)

    def _legacy_problem(self, key: str, run_dir: Path, record: Dict[str, Any]) -> Optional[str]:
        path = run_dir / RESULT_FILE
        missing = [name for name in REQUIRED_FIELDS if name not in record]
        if missing:
            return f"{path} lacks the field(s) {', '.join(missing)} that every finished run records"
        if not (run_dir / MODEL_FILE).is_file():
            return f"{run_dir / MODEL_FILE} is missing: every finished run keeps its final weights"
        # No digests to compare with: at least every file must read back the way the store will read it.
        for name in self._sealed_files(run_dir):
            file = run_dir / name
            try:
                if name.endswith(".pt"):
                    safe_torch_load(file)
                elif name == CONFIG_FILE and config_key(json.loads(file.read_bytes())) != key:
                    return f"{file} holds a config that is not this folder's run {key}"
            except CorruptRunError as err:
                return err.reason
            except (OSError, ValueError, TypeError) as err:
                return f"{file} cannot be read ({type(err).__name__}: {err})"
        return None

    # -- opening a run: inspect, then tidy, seal or set aside under the lock -----------------
    def _needs_attention(self, run_dir: Path, found: _Inspection) -> bool:
        """Whether opening the run has more to do than read it: set it aside, tidy it, or seal it."""
        if found.problem is not None or any(_is_temporary(p.name) for p in run_dir.iterdir()):
            return True
        return found.finished and (found.seal is None or (run_dir / CHECKPOINT_FILE).exists())

    @contextlib.contextmanager
    def _exclusive(self, config: RunConfig, have_lock: bool) -> Iterator[bool]:
        """Whether this process may change the run folder: it holds the lock, or takes it without waiting."""
        if have_lock:
            yield True
            return
        lock = self.lock(config)
        try:
            lock.acquire(timeout=0)
        except (Timeout, OSError):  # another process is on it, or the store is read-only
            yield False
            return
        try:
            yield True
        finally:
            lock.release()

    def _open(self, config: RunConfig, have_lock: bool = False) -> _Opened:
        key, run_dir = config.key, self.run_dir(config)
        if not run_dir.is_dir():
            return _Opened()
        found = self._inspect(key, run_dir)
        if not self._needs_attention(run_dir, found):
            return _Opened(record=found.record, seal=found.seal)
        with self._exclusive(config, have_lock) as exclusive:
            if not exclusive:
                if found.problem is not None:
                    warn_corrupt(f"{found.problem}; another process holds this run's lock, so it is left in place "
                                 f"for now")
                return _Opened(record=found.record, problem=found.problem, seal=found.seal)
            if not have_lock:  # the lock's previous holder may have replaced the run: look again
                found = self._inspect(key, run_dir)
            self._remove_temporary_files(run_dir)
            if found.problem is not None:
                moved_to = self._set_aside(run_dir)
                where = f"moved aside to {moved_to}" if moved_to else f"left in place (delete {run_dir})"
                warn_corrupt(f"{found.problem}; the run was {where} and will be trained again")
                return _Opened(problem=found.problem, moved_to=moved_to)
            if found.finished:
                (run_dir / CHECKPOINT_FILE).unlink(missing_ok=True)
                if found.seal is None:
                    found = self._seal_legacy(key, run_dir, found)
            return _Opened(record=found.record, seal=found.seal)

    def _seal_legacy(self, key: str, run_dir: Path, found: _Inspection) -> _Inspection:
        try:
            self._write_sealed(key, run_dir, found.record)
        except OSError as err:
            log.info("could not seal the earlier record in %s (%s); it is read unsealed", run_dir, err)
            return found
        log.info("sealed the earlier record in %s with digests", run_dir)
        return self._inspect(key, run_dir)

    @staticmethod
    def _remove_temporary_files(run_dir: Path) -> None:
        for path in run_dir.iterdir():
            if _is_temporary(path.name) and path.is_file():
                try:
                    path.unlink()
                    log.info("removed %s, left by an interrupted write", path)
                except OSError:
                    pass

    @staticmethod
    def _set_aside(run_dir: Path) -> Optional[Path]:
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        target = run_dir.with_name(f"{run_dir.name}{CORRUPT_MARK}{stamp}")
        suffix = 1
        while target.exists():
            target = run_dir.with_name(f"{run_dir.name}{CORRUPT_MARK}{stamp}-{suffix}")
            suffix += 1
        try:
            os.rename(run_dir, target)
        except OSError as err:
            log.warning("could not move %s aside (%s)", run_dir, err)
            return None
        return target

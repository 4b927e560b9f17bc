"""Where a run is cached: one folder per config hash, written so that a crash loses at most an epoch.

Layout of ``<root>/runs/<name>-<key>/``:

- ``config.json``    the run's config, written when training starts
- ``checkpoint.pt``  the state after the last finished epoch (resumed from after an interruption)
- ``model.pt``       the final weights (a state_dict)
- ``result.json``    the result record; written last, atomically. Its presence is what
                     "finished" means, so a half-written run is never read as finished.

Every file is written to a temporary name in the same folder and moved into
place with ``os.replace``, which is atomic on POSIX and Windows. A file lock per
run makes two processes that ask for the same run (say, the same teacher from
two notebooks) train it once: the second waits, then loads.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch
from filelock import FileLock

from .config import RunConfig

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"
MODEL_FILE = "model.pt"
CHECKPOINT_FILE = "checkpoint.pt"
CONFIG_FILE = "config.json"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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


def atomic_torch_save(obj: Any, path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def safe_torch_load(path: Path, map_location="cpu") -> Any:
    """Load tensors and plain containers only: no pickled code runs from a results folder."""
    return torch.load(path, map_location=map_location, weights_only=True)


class RunStore:
    """A folder of finished and in-progress runs, keyed by ``RunConfig.key``."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()
        self.runs_dir = self.root / "runs"
        self.runs_dir.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"RunStore({str(self.root)!r})"

    def run_dir(self, config: RunConfig) -> Path:
        return self.runs_dir / f"{config.name}-{config.key}"

    def is_finished(self, config: RunConfig) -> bool:
        """Whether the run has a readable result record (a corrupt one counts as unfinished)."""
        return self.load_result(config) is not None

    def load_result(self, config: RunConfig) -> Optional[Dict[str, Any]]:
        """The finished result record, or None. A corrupt record counts as unfinished."""
        path = self.run_dir(config) / RESULT_FILE
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as err:  # ValueError: bad JSON, and bytes that are not UTF-8
            log.warning("ignoring unreadable result %s (%s); the run will be redone", path, err)
            return None
        if not isinstance(record, dict):
            log.warning("ignoring result %s that is not a record; the run will be redone", path)
            return None
        return record

    def lock(self, config: RunConfig) -> FileLock:
        return FileLock(str(self.runs_dir / f".{config.name}-{config.key}.lock"))

    def get_or_run(self, config: RunConfig, train: Callable[[Path], Dict[str, Any]]) -> Dict[str, Any]:
        """Return the finished record of ``config``, training it with ``train(run_dir)`` on a miss.

        ``train`` must save the weights (``save_model``) and return the result record;
        the store writes the record last.
        """
        cached = self.load_result(config)
        if cached is not None:
            log.info("run store hit: %s", config.name)
            return cached
        with self.lock(config):
            cached = self.load_result(config)  # another process may have finished it while we waited
            if cached is not None:
                log.info("run store hit after waiting for the lock: %s", config.name)
                return cached
            run_dir = self.run_dir(config)
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(run_dir / CONFIG_FILE, config.to_dict())
            record = train(run_dir)
            atomic_write_json(run_dir / RESULT_FILE, record)
            # The checkpoint is only needed to resume; a finished run keeps its final weights.
            (run_dir / CHECKPOINT_FILE).unlink(missing_ok=True)
            return record

    # -- checkpoints and weights -----------------------------------------------------------
    @staticmethod
    def save_checkpoint(run_dir: Path, state: Dict[str, Any]) -> None:
        atomic_torch_save(state, Path(run_dir) / CHECKPOINT_FILE)

    @staticmethod
    def load_checkpoint(run_dir: Path) -> Optional[Dict[str, Any]]:
        path = Path(run_dir) / CHECKPOINT_FILE
        if not path.is_file():
            return None
        try:
            return safe_torch_load(path)
        except Exception as err:  # a torn or foreign file: start over rather than crash
            log.warning("ignoring unreadable checkpoint %s (%s); training from scratch", path, err)
            return None

    @staticmethod
    def save_model(run_dir: Path, state_dict: Dict[str, torch.Tensor]) -> None:
        atomic_torch_save({k: v.detach().cpu() for k, v in state_dict.items()}, Path(run_dir) / MODEL_FILE)

    def load_state_dict(self, config: RunConfig) -> Dict[str, torch.Tensor]:
        if not self.is_finished(config):
            raise FileNotFoundError(f"run {config.name} ({config.key}) is not finished in {self.root}")
        return safe_torch_load(self.run_dir(config) / MODEL_FILE)

    def finished_records(self):
        """Every finished record in the store (for browsing in a notebook)."""
        for path in sorted(self.runs_dir.glob(f"*/{RESULT_FILE}")):
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(record, dict):
                yield record

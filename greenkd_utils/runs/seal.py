"""The seal of a finished run: SHA-256 digests of its record and files, written once and checked on every read.

A finished run's ``result.json`` carries a field ``integrity`` with

- ``key``: the run key of the folder it was written for,
- ``files``: the SHA-256 of every other file in the run folder (weights, samples, ``config.json``), except
  the files kept only to continue training and temporary files,
- ``record``: the SHA-256 of the record's canonical JSON (sorted keys, no spaces) with the ``integrity``
  field in it minus this ``record`` entry,

all in the one atomic write of ``result.json``. A record names another run when its ``key``, its config's
hash or the seal's ``key`` is not the folder's; it fails its seal when its record digest differs (an edited
number) or a sealed file is missing or fails its digest (flipped or truncated bytes). The checks here only
read; :class:`~greenkd_utils.runs.store.RunStore` decides what to do with a run that fails them.

A run's seal is verified once per process (:class:`VerifiedSeals`): the record and the seal that passed are
remembered with the stat of ``result.json`` and of every sealed file (size, modification and change times,
inode), as git's index remembers a file. A later look compares the stats only and reads no file's contents;
a file written, replaced or touched since then has another stat, and the run is read and verified again.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

from greenkd_utils.core.config import config_key

INTEGRITY_FIELD = "integrity"
DIGEST_ALGORITHM = "sha256"

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _record_digest(record: Dict[str, Any], seal: Dict[str, Any]) -> str:
    unsigned = {k: v for k, v in seal.items() if k != "record"}
    return hashlib.sha256(_canonical({**record, INTEGRITY_FIELD: unsigned})).hexdigest()


def sealed_record(key: str, run_dir: Path, file_names: Sequence[str], record: Dict[str, Any]) -> Dict[str, Any]:
    """``record`` as JSON gives it back, with its seal over itself and the files ``file_names`` of ``run_dir``."""
    # The digest is taken over the record as JSON gives it back, so that a reader recomputes the same bytes.
    stored = json.loads(json.dumps(record, default=str))
    seal: Dict[str, Any] = {
        "algorithm": DIGEST_ALGORITHM,
        "key": key,
        "files": {name: sha256_file(run_dir / name) for name in file_names},
    }
    seal["record"] = _record_digest(stored, seal)
    return {**stored, INTEGRITY_FIELD: seal}


def identity_problem(key: str, path: Path, record: Dict[str, Any]) -> Optional[str]:
    """Why the record read from ``path`` is not the record of run ``key`` (None when it is)."""
    if "key" in record and record["key"] != key:
        return (f"{path} is the record of run {record['key']}, not of this folder's run {key} "
                f"(copied from another run?)")
    if "config" in record:
        try:
            recorded = config_key(record["config"])
        except (TypeError, ValueError):
            recorded = None
        if recorded != key:
            return f"{path} holds a config that is not this folder's run {key} (copied or edited?)"
    return None


def seal_problem(key: str, run_dir: Path, path: Path, record: Dict[str, Any], seal: Any) -> Optional[str]:
    """Why ``record`` (read from ``path``, without its seal) and the files of ``run_dir`` fail ``seal``
    (None when they pass)."""
    if not (isinstance(seal, dict) and isinstance(seal.get("files"), dict) and isinstance(seal.get("record"), str)):
        return f"{path} has a damaged {INTEGRITY_FIELD!r} field"
    if seal.get("key") != key:
        return (f"{path} was sealed for run {seal.get('key')}, not for this folder's run {key} "
                f"(copied from another run?)")
    if _record_digest(record, seal) != seal["record"]:
        return f"{path} was changed after the run finished (its SHA-256 does not match the seal)"
    for name, expected in seal["files"].items():
        relative = Path(name)
        if relative.is_absolute() or ".." in relative.parts:
            return f"{path} seals a file outside its run folder ({name!r})"
        file = run_dir / relative
        if not file.is_file():
            return f"{file} is missing from the finished run"
        if sha256_file(file) != expected:
            return f"{file} does not match the SHA-256 recorded when the run finished (damaged or changed)"
    return None


def _stat_signature(path: Path) -> Optional[Tuple[int, int, int, int]]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    # The change time moves on any write or touch and cannot be set back, unlike the modification time.
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


class VerifiedSeals:
    """Runs whose seal passed in this process, each with the stats of its files when the check read them."""

    def __init__(self):
        self._runs: Dict[Path, Tuple[Tuple, Dict[str, Any], Dict[str, Any]]] = {}
        self._guard = threading.Lock()

    @staticmethod
    def signature(run_dir: Path, result_name: str, seal: Dict[str, Any]) -> Tuple:
        """The stats of ``result_name`` and of every file ``seal`` covers."""
        names = (result_name, *sorted(seal.get("files", {})))
        return tuple((name, _stat_signature(Path(run_dir) / name)) for name in names)

    def remember(self, run_dir: Path, result_name: str, record: Dict[str, Any], seal: Dict[str, Any],
                 signature: Tuple) -> None:
        """Remember a run that passed its seal. ``signature`` was taken before its files were read: a file
        written during the check leaves the signatures different, and nothing is remembered."""
        if signature != self.signature(run_dir, result_name, seal):
            return
        with self._guard:
            self._runs[Path(run_dir)] = (signature, copy.deepcopy(record), copy.deepcopy(seal))

    def lookup(self, run_dir: Path, result_name: str) -> Optional[Tuple[Dict[str, Any], Dict[str, Any]]]:
        """Copies of the record and seal of a run verified earlier whose files kept their stats, else None."""
        with self._guard:
            known = self._runs.get(Path(run_dir))
        if known is None:
            return None
        signature, record, seal = known
        if signature != self.signature(run_dir, result_name, seal):
            self.forget(run_dir)
            return None
        return copy.deepcopy(record), copy.deepcopy(seal)

    def forget(self, run_dir: Path) -> None:
        with self._guard:
            self._runs.pop(Path(run_dir), None)


# One per process: every RunStore on the same folders shares what was verified.
VERIFIED_SEALS = VerifiedSeals()

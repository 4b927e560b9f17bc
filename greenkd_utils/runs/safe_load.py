"""Reading tensors back from a results folder without running code, and the errors that name a damaged run file.

Files are read with ``torch.load(weights_only=True)``: tensors and plain containers only, so a file that was
swapped for a crafted pickle cannot run code. A file that cannot be read raises :class:`CorruptRunError`
naming it and the folder to delete.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import torch


class CorruptRunError(pickle.UnpicklingError):
    """A run file that cannot be trusted: damaged, changed since the run finished, or not plain tensors.

    A subclass of :class:`pickle.UnpicklingError`, the error ``torch.load(weights_only=True)`` raises for a
    file it refuses, so code that guards against that refusal catches this too. ``reason`` is what is wrong
    (naming the file), the message adds what to do about it.
    """

    def __init__(self, reason: str, advice: str = ""):
        super().__init__(f"{reason}. {advice}" if advice else reason)
        self.reason = reason


class CorruptRunWarning(UserWarning):
    """A run (or checkpoint) failed its checks and was set aside or ignored; the message names the file."""


def warn_corrupt(message: str) -> None:
    # stacklevel 3: the warning points at the code that asked the store for the run.
    warnings.warn(message, CorruptRunWarning, stacklevel=3)


def retrain_advice(run_dir: Path) -> str:
    return f"Delete the run folder {run_dir} and ask for the run again to train it anew"


def load_tensors(source: Any, path: Path, map_location="cpu") -> Any:
    """Tensors and plain containers from ``source`` (a path or a buffer holding the bytes of ``path``)."""
    try:
        return torch.load(source, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError:
        why = "it holds objects other than tensors and plain containers, which are never loaded from a results folder"
    except Exception as err:  # a torn zip, flipped bytes, an empty file: torch raises many kinds
        why = f"it is truncated or damaged ({type(err).__name__})"
    # torch's own message suggests weights_only=False, which would run code from the file: not the fix here.
    raise CorruptRunError(f"cannot read {path}: {why}", retrain_advice(Path(path).parent)) from None


def safe_torch_load(path: Path, map_location="cpu") -> Any:
    """Load tensors and plain containers only: no pickled code runs from a results folder.

    A file that cannot be read raises :class:`CorruptRunError` naming it and the folder to delete.
    """
    return load_tensors(path, Path(path), map_location)

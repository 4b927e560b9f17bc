"""Shared fixtures for the greenkd test-suite.

The suite runs on a small, shared CPU: one intra-op thread is set for the whole
session, because with two threads on two busy cores OpenMP's threads mostly
wait on each other (an epoch measured 10-50x slower than with one thread).
"""

from __future__ import annotations

import os

# Before torch is imported, and inherited by the notebook kernels papermill starts.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from greenkd_utils.runs.store import RunStore  # noqa: E402
from greenkd_utils.settings.profiles import load_profile  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def store(tmp_path) -> RunStore:
    """An empty run store in a temporary folder."""
    return RunStore(tmp_path / "store")


@pytest.fixture
def smoke():
    """The smoke profile: a tiny slice of digits, two epochs, CPU."""
    return load_profile("smoke")


def _full_digits(config):
    teacher = config.teacher
    if teacher is not None:
        teacher = _full_digits(teacher)
    return config.replace(train_subset=None, test_subset=None, teacher=teacher)


@pytest.fixture(scope="session")
def full_digits():
    """A function: ``config`` (and its teacher) on the whole digits train and test splits.

    The smoke profile slices digits; a ``None`` override is skipped by
    ``load_profile``, so the slice is removed on the configs themselves.
    """
    return _full_digits

"""Where the lifecycle, the sweeps and the bill find every kind of run: a task class registers here under
its name with :func:`register_task`, and is looked up by name, by config or by a stored config dict.

A leaf module: it imports nothing, so a task module registers here without importing the lifecycle that runs
it. A task registers when its module is imported: :mod:`greenkd_utils.runs.lifecycle` imports the built-in
ones (``greenkd_utils.runs.tasks``), a kind of run of your own registers when you import its module.
"""

from __future__ import annotations

from typing import Any, Dict

TASKS: Dict[str, type] = {}

_HINT = "the built-in kinds of run register when greenkd_utils.runs.lifecycle is imported"


def register_task(cls: type) -> type:
    """Class decorator: make ``cls`` (a :class:`~greenkd_utils.runs.task.Task`) the task of its ``config_type``."""
    if cls.name in TASKS and TASKS[cls.name] is not cls:
        raise ValueError(f"a task named {cls.name!r} is registered already")
    TASKS[cls.name] = cls
    return cls


def _registered() -> Dict[str, type]:
    if not TASKS:
        raise LookupError(f"no kind of run is registered yet: {_HINT}")
    return TASKS


def task_named(name: str) -> type:
    tasks = _registered()
    try:
        return tasks[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; valid: {', '.join(sorted(tasks))}") from None


def task_for(config: Any) -> type:
    """The task that trains ``config`` (by its config type)."""
    tasks = _registered()
    for task in tasks.values():
        if type(config) is task.config_type:
            return task
    raise TypeError(f"no task trains a {type(config).__name__}; registered: {', '.join(sorted(tasks))}")


def task_for_config_dict(config_dict: Dict[str, Any]) -> type:
    """The task of a stored config dict, for a record written before records named their task."""
    tasks = _registered()
    for task in tasks.values():
        if task.recognises(config_dict):
            return task
    return tasks["classification"]  # the paper's own runs: the configs that name no other task

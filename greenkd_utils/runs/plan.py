"""The runs a set of notebooks needs, as a graph: what an executor trains and what ``--plan`` bills.

A :class:`RunPlan` holds each run once, by key, however many notebooks need it, with edges from a run to the
runs it needs first (a KD student to its teacher, QAT to its float start: ``Task.dependencies``). Adding a
run adds its dependencies. :meth:`RunPlan.order` lists the runs dependencies first, so that a shared teacher
comes before every run that distils from it.

A search that decides its runs while it goes (successive halving: which taus reach the next rung depends on
the last rung's results) cannot be listed up front; the plan keeps a note of it (:attr:`RunPlan.adaptive`)
and the search itself (:attr:`RunPlan.searches`: its grid and settings), which the bill projects as an
expectation, and the notebook trains those runs itself.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List

from greenkd_utils.runs.registry import task_for
from greenkd_utils.runs.store import RunStore


@dataclass
class PlannedRun:
    """One run of the plan: its config, the notebooks that need it, task options (never numbers), the keys
    of the runs it needs first."""

    config: Any
    needed_by: List[str] = field(default_factory=list)
    options: Dict[str, Any] = field(default_factory=dict)
    dependencies: List[str] = field(default_factory=list)

    key = property(lambda self: self.config.key)
    name = property(lambda self: self.config.name)
    task = property(lambda self: task_for(self.config).name)


@dataclass
class PlannedSearch:
    """A successive-halving search of one notebook: the full-length configs of its grid (one per tau) and
    its :class:`~greenkd_utils.runs.successive_halving.HalvingSettings`."""

    needed_by: str
    description: str
    grid: List[Any]
    settings: Any


class RunPlan:
    """Runs by key, each once, with the edges to their dependencies."""

    def __init__(self) -> None:
        self.runs: Dict[str, PlannedRun] = {}
        self.adaptive: List[str] = []
        self.searches: List[PlannedSearch] = []

    def __len__(self) -> int:
        return len(self.runs)

    def __contains__(self, key: str) -> bool:
        return key in self.runs

    def add(self, config, needed_by: str, **options) -> PlannedRun:
        """Add ``config`` (and, first, the runs it needs) for the notebook ``needed_by``."""
        key = config.key
        run = self.runs.get(key)
        if run is None:
            dependencies = [self.add(dep, needed_by, **options).key
                            for dep in task_for(config).dependencies(config).values()]
            run = self.runs[key] = PlannedRun(config, [], dict(options), dependencies)
        if needed_by not in run.needed_by:
            run.needed_by.append(needed_by)
            for dep in run.dependencies:
                self.add(self.runs[dep].config, needed_by, **options)
        return run

    def add_all(self, configs: Iterable, needed_by: str, **options) -> None:
        for config in configs:
            self.add(config, needed_by, **options)

    def note_adaptive(self, description: str) -> None:
        if description not in self.adaptive:
            self.adaptive.append(description)

    def add_search(self, search: PlannedSearch) -> None:
        """A search whose runs depend on its own results: its rungs are projected, not listed."""
        self.searches.append(search)

    def order(self) -> List[PlannedRun]:
        """Every run after the runs it needs (depth-first, otherwise in the order they were added)."""
        ordered: List[PlannedRun] = []
        placed: set = set()

        def place(run: PlannedRun) -> None:
            if run.key in placed:
                return
            for dep in run.dependencies:
                place(self.runs[dep])
            placed.add(run.key)
            ordered.append(run)

        for run in list(self.runs.values()):
            place(run)
        return ordered

    def longest_first(self, seconds: Dict[str, float]) -> List[PlannedRun]:
        """Every run after the runs it needs, and among the runs ready at each point the one that heads the
        longest chain of work (its own projected ``seconds`` plus the longest chain of runs that need it)
        first: a parallel executor that starts runs in this order does not leave the long ones for last, with
        every other worker idle. Runs without a projection count as one second."""
        needed_by: Dict[str, List[str]] = {key: [] for key in self.runs}
        for run in self.runs.values():
            for dep in run.dependencies:
                if dep in needed_by:
                    needed_by[dep].append(run.key)
        chain: Dict[str, float] = {}
        for run in reversed(self.order()):  # dependents before the runs they need
            chain[run.key] = seconds.get(run.key, 1.0) + max((chain[k] for k in needed_by[run.key]), default=0.0)
        ordered: List[PlannedRun] = []
        placed: set = set()
        waiting = list(self.runs.values())
        while waiting:
            ready = [r for r in waiting if all(d in placed or d not in self.runs for d in r.dependencies)]
            best = max(ready, key=lambda r: chain[r.key])  # max() keeps the first of equal chains: stable
            ordered.append(best)
            placed.add(best.key)
            waiting.remove(best)
        return ordered

    def cached(self, store: RunStore) -> Dict[str, bool]:
        """Key -> whether ``store`` holds the run finished and intact (a damaged run counts as missing)."""
        return {run.key: store.is_finished(run.config) for run in self.order()}

    def missing(self, store: RunStore) -> "RunPlan":
        """The runs ``store`` lacks, with their edges (a cached dependency is simply not in the result)."""
        cached = self.cached(store)
        rest = RunPlan()
        for run in self.order():
            if not cached[run.key]:
                kept = [d for d in run.dependencies if not cached[d]]
                rest.runs[run.key] = dataclasses.replace(run, dependencies=kept, needed_by=list(run.needed_by))
        rest.adaptive = list(self.adaptive)
        rest.searches = list(self.searches)
        return rest

    def by_notebook(self) -> Dict[str, List[PlannedRun]]:
        out: Dict[str, List[PlannedRun]] = {}
        for run in self.order():
            for notebook in run.needed_by:
                out.setdefault(notebook, []).append(run)
        return out

"""``notebooks/explore_runs.ipynb``: what a run store holds, and the views of one run.

The notebook trains nothing: it reads whatever the store of its ``results_dir`` holds (every profile, every
kind of run). With widgets it lets a person filter the list and pick a run; for a reader without them (and
under papermill) :func:`write_static_views` writes the same views for the first run of the list to the
notebook's output folder, ``figures/<profile>/`` by default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import pandas as pd

from greenkd_utils.analysis import run_explorer
from greenkd_utils.analysis.plotting import save_figure
from greenkd_utils.paper.experiments import write_table
from greenkd_utils.runs.record import RunResult

LISTING = "explore_runs_store"
RUN_VIEWS = "explore_runs_first_run"
PROVENANCE = "explore_runs_first_run_provenance"


def needed_runs(exp, plan, **knobs) -> None:
    """None: the notebook shows the runs the store already holds."""


@dataclass
class StoreContents:
    """A store's finished runs and their table (:func:`greenkd_utils.analysis.run_explorer.runs_table`)."""

    root: Path
    runs: Dict[str, RunResult]
    table: pd.DataFrame

    @classmethod
    def of(cls, exp) -> "StoreContents":
        """The runs of ``exp``'s store, their CO2 under ``exp``'s PUE and carbon intensity."""
        runs = run_explorer.finished_runs(exp.store)
        return cls(exp.store.root, runs, run_explorer.runs_table(exp.store, runs, reprice=exp.energy))

    @property
    def empty(self) -> bool:
        return self.table.empty

    def run(self, key: str) -> RunResult:
        if key not in self.runs:
            raise ValueError(f"no run with key {key!r} in {self.root}; valid: {', '.join(self.runs) or 'none'}")
        return self.runs[key]

    def caption(self, key: str) -> str:
        return run_explorer.run_caption(self.table, key)

    def views_png(self, key: str) -> bytes:
        """The run's three panels as PNG bytes, captioned with its profile and seeds."""
        return run_explorer.figure_png(run_explorer.run_figure(self.run(key), self.caption(key)))


@dataclass
class StaticViews:
    """What :func:`write_static_views` wrote, and the first run it drew (None for an empty store)."""

    paths: List[Path] = field(default_factory=list)
    first_key: Optional[str] = None
    message: str = ""


def listing_note(exp, contents: StoreContents) -> str:
    return (f"Runs in the store {contents.root} (notebook profile {exp.profile.name}; each row's profile is its "
            f"own): {len(contents.table)} finished. {run_explorer.energy_note(contents.table)}.")


def write_static_views(exp, contents: StoreContents, output_dir) -> StaticViews:
    """The store's listing (CSV and Markdown) and, for its first run, the figure (PNG and PDF) and the
    provenance table; an empty store gets an empty listing and the message that says how to fill one."""
    out = Path(output_dir)
    paths = write_table(contents.table, out, LISTING, listing_note(exp, contents))
    if contents.empty:
        return StaticViews(paths, None, run_explorer.empty_store_message(contents.root, exp.profile.name))
    key = str(contents.table["key"].iloc[0])
    run = contents.run(key)
    import matplotlib.pyplot as plt

    fig = run_explorer.run_figure(run, contents.caption(key))
    try:
        paths += save_figure(fig, out / RUN_VIEWS)
    finally:
        plt.close(fig)  # the notebook shows the views where it chooses, not where they are written
    paths += write_table(run_explorer.provenance(run), out, PROVENANCE, f"Provenance of {contents.caption(key)}")
    return StaticViews(paths, key, "")

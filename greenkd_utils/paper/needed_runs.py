"""The runs each notebook needs, collected before anything trains: one :class:`~greenkd_utils.runs.plan.RunPlan`.

Each paper module says which runs its notebook reads (its ``needed_runs``); this module knows how each notebook
sets up its experiment, so that ``run_all.sh`` can collect the runs of every notebook at its defaults
(:func:`plan_notebooks`), hand them to an executor, then let the notebooks render from the store. Inside a
notebook, :func:`run_needed` does the same for that notebook, with its own knobs.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, Optional, Sequence, Tuple

from greenkd_utils.paper import (
    beyond_temperature_strategies,
    experiments,
    explore_runs,
    figure1_carbon_curves,
    figure3_temperature_and_batch,
    figure4_logits_gradcam_confusion,
    table1_carbon_footprint,
    table4_detection,
    table4_kd_losses,
    table5_metrics,
    table6_dfkd,
    table7_teacher_student_pairs,
    table8_quantization,
)
from greenkd_utils.runs.executors import ExecutionSummary, make_executor
from greenkd_utils.runs.plan import RunPlan


def _start_here_runs(exp, plan: RunPlan) -> None:
    # The first notebook shows one teacher and one stochastic student on the embedded digits.
    plan.add(exp.profile.teacher_config("digits", 0), "00_start_here")
    plan.add(exp.stochastic_config("digits", 0, "hkd"), "00_start_here")


def _without_settings(needed_runs):
    # needed_runs(exp, plan, **knobs) of a notebook whose experiment carries everything it needs
    return lambda exp, _, plan, **knobs: needed_runs(exp, plan, **knobs)


# Notebook -> needed(exp, settings, plan, **knobs): the runs it reads, given the experiment its one set-up
# (experiments.setup(profile, notebook=...)) gives and that experiment's settings.
NOTEBOOKS: Dict[str, Callable[..., None]] = {
    "00_start_here": _without_settings(_start_here_runs),
    "beyond_temperature_strategies": beyond_temperature_strategies.needed_runs,
    "explore_runs": _without_settings(explore_runs.needed_runs),
    "figure1_carbon_curves": _without_settings(figure1_carbon_curves.needed_runs),
    "figure3_temperature_and_batch": figure3_temperature_and_batch.needed_runs,
    "figure4_logits_gradcam_confusion": _without_settings(figure4_logits_gradcam_confusion.needed_runs),
    "table1_carbon_footprint": _without_settings(table1_carbon_footprint.needed_runs),
    "table4_detection": _without_settings(table4_detection.needed_runs),
    "table4_kd_losses": _without_settings(table4_kd_losses.needed_runs),
    "table5_metrics": _without_settings(table5_metrics.needed_runs),
    "table6_dfkd": _without_settings(table6_dfkd.needed_runs),
    "table7_teacher_student_pairs": table7_teacher_student_pairs.needed_runs,
    "table8_quantization": table8_quantization.needed_runs,
}


def check_notebook(name: str) -> str:
    name = str(name).removesuffix(".ipynb")
    if name not in NOTEBOOKS:
        raise ValueError(f"no notebook {name!r} has a run plan; valid: {', '.join(sorted(NOTEBOOKS))}")
    return name


def plan_notebooks(
    notebooks: Optional[Iterable[str]] = None,
    profile: str = "demo",
    results_dir=None,
    data_root=None,
    device: Optional[str] = None,
) -> Tuple[Any, RunPlan]:
    """The run store and the runs that ``notebooks`` (default: all) need at their default knobs, as run by
    ``run_all.sh``; every notebook's runs once, teachers before their students."""
    plan = RunPlan()
    store = None
    for name in [check_notebook(n) for n in (notebooks or NOTEBOOKS)]:
        exp = experiments.setup(profile, notebook=name, results_dir=results_dir, data_root=data_root, device=device,
                                progress=False)
        NOTEBOOKS[name](exp, exp.settings, plan)
        store = store or exp.store
    return store, plan


def plan_of(notebook: str, exp, settings=None, **knobs) -> RunPlan:
    """The runs one notebook needs with its own experiment and knobs (e.g. ``loss``, ``seed``, ``losses``)."""
    plan = RunPlan()
    NOTEBOOKS[check_notebook(notebook)](exp, settings, plan, **_given(knobs))
    return plan


def run_needed(notebook: str, exp, settings=None, executor: Optional[str] = None, address: Optional[str] = None,
               **knobs) -> ExecutionSummary:
    """Train (or find cached) every run ``notebook`` reads, with ``executor`` (``local``, the default, or
    ``ray``: in parallel on a local Ray runtime or the cluster at ``address``). The notebook's cells then
    read the runs from the store."""
    plan = plan_of(notebook, exp, settings, **knobs)
    runner = make_executor(executor or "local", address=address)
    return runner.run(plan, exp.store, device=exp.device, data_root=exp.data_root, progress=exp.progress)


def _given(knobs: Dict[str, Any]) -> Dict[str, Any]:
    # A notebook passes its knobs as they are; None means "the default", as everywhere else.
    return {k: v for k, v in knobs.items() if v is not None}


def notebook_names() -> Sequence[str]:
    return tuple(sorted(NOTEBOOKS))

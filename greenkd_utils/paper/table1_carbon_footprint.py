"""Table 1: the carbon footprint of the teacher, the student, KD with a tuned tau (the whole grid billed) and
KD with the stochastic tau, per dataset."""

from __future__ import annotations

import pandas as pd

from greenkd_utils.paper.experiments import Experiment, summarise


def table1(exp: Experiment, loss: str = "hkd") -> pd.DataFrame:
    """Table 1: teacher, student, tuned KD and stochastic KD per dataset."""
    rows = []
    for dataset in exp.profile.datasets:
        seeds = exp.profile.verdict_seeds
        cells = {
            "teacher": [exp.teacher(dataset, s) for s in seeds],
            "student": [exp.student(dataset, s) for s in seeds],
            "kd_tuned": [exp.tuned(dataset, s, loss) for s in seeds],
            "kd_stochastic": [exp.stochastic(dataset, s, loss) for s in seeds],
        }
        for method, results in cells.items():
            model = exp.profile.teacher_model if method == "teacher" else exp.profile.student_model
            rows.append(summarise(exp, results, dataset=dataset, method=method, model=model))
    return pd.DataFrame(rows)


METHODS = ("teacher", "student", "kd_tuned", "kd_stochastic")


def needed_runs(exp: Experiment, plan, loss: str = "hkd") -> None:
    """Add the runs of :func:`table1` (and of its verdict, the same runs) to ``plan``."""
    for dataset in exp.profile.datasets:
        for seed in exp.profile.verdict_seeds:
            for method in METHODS:
                plan.add_all(exp.method_configs(method, dataset, seed, loss), "table1_carbon_footprint")

"""Table 1: the carbon footprint of the teacher, the student, KD with a tuned tau (the whole grid billed) and
KD with the stochastic tau, per dataset."""

from __future__ import annotations

import pandas as pd

from greenkd_utils.paper.experiments import Experiment, summarise


def table1(exp: Experiment, loss: str = "hkd") -> pd.DataFrame:
    """Table 1: teacher, student, tuned KD and stochastic KD per dataset."""
    rows = []
    for dataset in exp.profile.datasets:
        seeds = exp.profile.seeds
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

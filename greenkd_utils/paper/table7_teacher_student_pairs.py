"""Table 7: does the stochastic temperature hold for weak and strong teachers and students?

The paper pairs a weak model (ShuffleNetV2, ~1.3M parameters) and a strong one
(ResNet18, ~11.2M) as teacher and as student, four pairs in all, and runs each
pair with a tuned tau (the whole grid, chosen on validation) and with
tau ~ U[2, 20] per batch. Teachers are the profile's teacher runs for their
architecture, so the ResNet18 teacher is the one Table 1 distils from.
"""

from __future__ import annotations

import logging
from typing import Dict, List, Sequence, Tuple

import pandas as pd

from greenkd_utils.paper.experiments import Experiment, summarise
from greenkd_utils.paper.extra_tables import compare_with_paper_dataset
from greenkd_utils.paper.reference import headline_metrics
from greenkd_utils.settings.extra_tables import NotebookSettings

log = logging.getLogger(__name__)

WEAK, STRONG = "shufflenetv2", "resnet18"

# (teacher, student) in the paper's order: weak-weak, strong-weak, weak-strong, strong-strong.
PAIRS: Tuple[Tuple[str, str], ...] = ((WEAK, WEAK), (STRONG, WEAK), (WEAK, STRONG), (STRONG, STRONG))

STRENGTH = {WEAK: "weak", STRONG: "strong"}

TABLE7_METRICS = headline_metrics()


def pair_label(teacher: str, student: str) -> str:
    return f"{teacher} -> {student}"


def strength_label(teacher: str, student: str) -> str:
    return f"{STRENGTH.get(teacher, '?')} teacher, {STRENGTH.get(student, '?')} student"


def table7(
    exp: Experiment,
    settings: NotebookSettings,
    pairs: Sequence[Tuple[str, str]] = PAIRS,
    loss: str = "hkd",
) -> pd.DataFrame:
    """One row per (pair, method): tuned tau (grid on validation) and stochastic tau, over seeds."""
    rows: List[Dict] = []
    changes = settings.student_changes()
    for teacher, student in pairs:
        models = {"teacher_model": teacher, "student_model": student}
        tuned = [
            exp.tuned(settings.dataset, s, loss, taus=settings.tau_grid, **models, **changes) for s in settings.seeds
        ]
        stochastic = [exp.stochastic(settings.dataset, s, loss, **models, **changes) for s in settings.seeds]
        keys = dict(dataset=settings.dataset, pair=pair_label(teacher, student),
                    strength=strength_label(teacher, student), teacher=teacher, student=student, loss=loss)
        for method, results in (("kd_tuned", tuned), ("kd_stochastic", stochastic)):
            rows.append(summarise(exp, results, **keys, method=method))
    return pd.DataFrame(rows)


def compare_table7(table: pd.DataFrame, settings: NotebookSettings) -> pd.DataFrame:
    """Ours beside the paper's Table 7 (Tiny ImageNet), matched on teacher, student and loss."""
    return compare_with_paper_dataset(
        table,
        "table7",
        TABLE7_METRICS,
        settings.paper_dataset,
        keys=("pair", "method"),
        extra_match=("teacher", "student", "loss"),
    )


def stochastic_vs_tuned(table: pd.DataFrame) -> pd.DataFrame:
    """Per pair: accuracy difference (stochastic - tuned) and the tuned/stochastic cost ratios."""
    out = []
    for pair, group in table.groupby("pair", sort=False):
        tuned = group[group["method"] == "kd_tuned"].iloc[0]
        stochastic = group[group["method"] == "kd_stochastic"].iloc[0]
        out.append(
            {
                "pair": pair,
                "teacher": tuned["teacher"],
                "student": tuned["student"],
                "grid_size": int(tuned["grid_size"]),
                "accuracy_difference_pct": float(stochastic["accuracy_pct"] - tuned["accuracy_pct"]),
                "energy_ratio_tuned_over_stochastic": float(tuned["energy_kwh"] / stochastic["energy_kwh"]),
                "flops_ratio_tuned_over_stochastic": float(
                    tuned["training_gflops_millions"] / stochastic["training_gflops_millions"]
                ),
            }
        )
    return pd.DataFrame(out)


def needed_runs(exp: Experiment, settings: NotebookSettings, plan, pairs: Sequence[Tuple[str, str]] = PAIRS,
                loss: str = "hkd") -> None:
    """Add the runs of :func:`table7` to ``plan``."""
    changes = settings.student_changes()
    for teacher, student in pairs:
        models = {"teacher_model": teacher, "student_model": student}
        for seed in settings.seeds:
            plan.add_all(exp.tuned_configs(settings.dataset, seed, loss, taus=settings.tau_grid, **models, **changes),
                         "table7_teacher_student_pairs")
            plan.add(exp.stochastic_config(settings.dataset, seed, loss, **models, **changes),
                     "table7_teacher_student_pairs")

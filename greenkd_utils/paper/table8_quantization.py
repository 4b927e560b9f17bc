"""Table 8: three ways of getting a small MobileNetV2 side by side: the float network trained alone
(cross-entropy), the same network trained with quantization-aware training and converted to int8, and KD from a
ResNet18 teacher with a tuned or a stochastic temperature. The QAT row costs the float training it starts from
plus QAT itself (:class:`~greenkd_utils.runs.sweep.QATPipeline`)."""

from __future__ import annotations

from typing import Tuple

import pandas as pd

from greenkd_utils.core.config import RunConfig
from greenkd_utils.core.quantization import QATConfig
from greenkd_utils.paper.experiments import summarise
from greenkd_utils.paper.extra_tables import compare_with_paper_dataset
from greenkd_utils.paper.reference import headline_metrics
from greenkd_utils.runs.sweep import train_qat

# ---------------------------------------------------------------------------------------------
# Table 8: the float student, QAT, and KD into the same architecture
# ---------------------------------------------------------------------------------------------
TABLE8_STUDENT = "mobilenetv2"
TABLE8_TEACHER = "resnet18"

TABLE8_METRICS = headline_metrics()


def student_config(exp, settings, seed: int, model: str = TABLE8_STUDENT) -> RunConfig:
    """The profile's cross-entropy student config for ``model``, with the notebook's epochs and lr."""
    config = exp.profile.student_config(settings.dataset, seed, model)
    return config.replace(train=exp.profile.train_settings("student", **settings.student_changes()))


def qat_config(exp, settings, seed: int, model: str = TABLE8_STUDENT) -> QATConfig:
    """The notebook's QAT run: fine-tuning of its cross-entropy student (or from scratch, ``qat_init``)."""
    student = student_config(exp, settings, seed, model)
    changes = settings.student_changes()
    if settings.qat_epochs is not None:
        changes["epochs"] = int(settings.qat_epochs)
    if settings.qat_lr is not None:
        changes["lr"] = float(settings.qat_lr)
    if settings.qat_init == "student":
        changes["warmup_epochs"] = 0  # the network is trained already: no warm-up from a random start
    return QATConfig.from_student(
        student, init=settings.qat_init, backend=settings.qat_backend,
        train=exp.profile.train_settings("student", **changes), freeze_fraction=settings.qat_freeze_fraction,
    )


def table8(exp, settings, student: str = TABLE8_STUDENT, teacher: str = TABLE8_TEACHER,
           loss: str = "hkd") -> Tuple[pd.DataFrame, pd.DataFrame]:
    """Table 8 and the QAT details.

    Returns ``(table, qat_details)``: one row per method (student, qat, kd_tuned, kd_stochastic)
    with accuracy (mean +- std over seeds; the int8 model's for QAT), GFLOPs (M), kWh, CO2eq and
    model size, the QAT row costing the float student it starts from plus QAT; and one row per seed
    of the QAT runs (fp32 vs int8 size, float vs fake-quant vs int8 accuracy, QAT's own cost).
    """
    changes = settings.student_changes()
    models = {"teacher_model": teacher, "student_model": student}
    qat = [train_qat(qat_config(exp, settings, s, student), exp.store, exp.device, exp.data_root, exp.progress)
           for s in settings.seeds]
    cells = {
        "student": [exp.run(student_config(exp, settings, s, student)) for s in settings.seeds],
        "qat": qat,
        "kd_tuned": [exp.tuned(settings.dataset, s, loss, taus=settings.tau_grid, **models, **changes)
                     for s in settings.seeds],
        "kd_stochastic": [exp.stochastic(settings.dataset, s, loss, **models, **changes) for s in settings.seeds],
    }
    fp32_mb = qat[0].qat.extras["model_size"]["fp32_mb"]
    rows = []
    for method, results in cells.items():
        row = summarise(
            exp, results, dataset=settings.dataset, method=method, model=student,
            teacher=teacher if method.startswith("kd") else "", loss=loss if method.startswith("kd") else "ce",
            weights="int8" if method == "qat" else "fp32",
        )
        row["model_size_mb"] = qat[0].qat.extras["model_size"]["int8_mb"] if method == "qat" else fp32_mb
        rows.append(row)
    details = pd.DataFrame(
        [
            {
                "dataset": settings.dataset,
                "seed": p.qat.config.seed,
                "backend": p.qat.config.backend,
                "qat_init": "trained float student" if p.initial is not None else "scratch",
                "qat_epochs": p.qat.config.train.epochs,
                "fp32_model_mb": p.qat.extras["model_size"]["fp32_mb"],
                "int8_model_mb": p.qat.extras["model_size"]["int8_mb"],
                "compression": p.qat.extras["model_size"]["compression"],
                "float_start_accuracy_pct": p.qat.extras["initial_test_accuracy"],
                "fake_quant_accuracy_pct": p.qat.extras["fake_quant_test_accuracy"],
                "int8_accuracy_pct": p.qat.test_accuracy,
                "qat_only_training_gflops_millions": p.qat.training_gflops_millions,
                "qat_only_energy_kwh": exp.energy(p.qat.energy).energy_kwh,
                "qat_only_co2_g": exp.energy(p.qat.energy).co2_g,
                "energy_source": exp.energy(p.qat.energy).source,
            }
            for p in qat
        ]
    )
    return pd.DataFrame(rows), details


def compare_table8(table: pd.DataFrame, settings) -> pd.DataFrame:
    """Ours beside the paper's Table 8 (CIFAR-10), one paper row per method."""
    return compare_with_paper_dataset(table, "table8", TABLE8_METRICS, settings.paper_dataset, keys=("method",))


def needed_runs(exp, settings, plan, student: str = TABLE8_STUDENT, teacher: str = TABLE8_TEACHER,
                loss: str = "hkd") -> None:
    """Add the runs of :func:`table8` (QAT after its float student, and KD into the same student) to ``plan``."""
    changes = settings.student_changes()
    models = {"teacher_model": teacher, "student_model": student}
    for seed in settings.seeds:
        plan.add(qat_config(exp, settings, seed, student), "table8_quantization")
        plan.add(student_config(exp, settings, seed, student), "table8_quantization")
        plan.add_all(exp.tuned_configs(settings.dataset, seed, loss, taus=settings.tau_grid, **models, **changes),
                     "table8_quantization")
        plan.add(exp.stochastic_config(settings.dataset, seed, loss, **models, **changes), "table8_quantization")

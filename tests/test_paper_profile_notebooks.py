"""Every notebook runs at the paper profile, on the CPU, from a data root in the paper's real formats.

The module writes CIFAR-10, CIFAR-100 (python pickles), Tiny ImageNet (the JPEG tree) and a PASCAL VOC
devkit (VOC2007 trainval/test, VOC2012 trainval) with a few images per class, then executes each notebook
through papermill with ``profile="paper"`` and overrides that shrink the paper's schedule to seconds
(one epoch, one seed, a two-value tau grid, tiny synthesis rounds, small detector images). So the paper
profile's settings, its data readers and every knob a notebook passes on are exercised end to end;
what the numbers are is not the point.

The notebooks share one run store, as in run_all.sh: Table 1 trains the teachers and KD runs that Figures 1,
3, 4 and Tables 4, 5, 7, 8 read. papermill runs two notebooks at a time (each kernel on one thread), which
halves the wall time on a two-core machine; a notebook that needs a run another one is training waits for
it on the run store's lock and then loads it. A notebook added to notebooks/
without an entry here still runs, with the common overrides its parameters cell declares.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
from dataset_writers import (
    voc_images,
    write_cifar10,
    write_cifar100,
    write_tinyimagenet,
    write_voc,
)
from notebook_runner import REPO, Job, run_concurrently

pytestmark = pytest.mark.notebook

# Every notebook gets these, where its parameters cell declares them.
COMMON = {"device": "cpu", "epochs": 1, "teacher_epochs": 1, "seeds": [0], "tau_grid": [2, 4]}
ENERGY_SOURCES = {"measured", "estimated", "partly estimated"}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """CIFAR-10/100 with one or two training images and one test image for each of ten classes, Tiny
    ImageNet with three classes, VOC with 12 trainval and 3 test images: enough for the validation split
    of every tuned sweep, and few enough that a ResNet18 epoch takes a second on one CPU thread."""
    root = tmp_path_factory.mktemp("paper_data")
    write_cifar10(root, per_batch=3, n_test=10, classes=10)
    write_cifar100(root, n_train=15, n_test=10, classes=10)
    write_tinyimagenet(root, per_class=2)
    write_voc(root, voc_images(trainval_2007=8, test_2007=3, trainval_2012=4), mark_boxes=True)
    return root


def declared_knobs(name: str) -> set:
    import papermill as pm

    return set(pm.inspect_notebook(str(REPO / "notebooks" / f"{name}.ipynb")))


def read_table(out, name: str, columns=()) -> pd.DataFrame:
    table = pd.read_csv(out / f"{name}.csv")
    missing = sorted(set(columns) - set(table.columns))
    assert not missing, f"{name}.csv lacks {missing}"
    return table


def finite_accuracies(table: pd.DataFrame, column: str = "accuracy_pct") -> None:
    values = table[column].to_numpy(dtype=float)
    assert np.isfinite(values).all() and ((values >= 0) & (values <= 100)).all(), f"{column}: {values}"


def energy_ok(table: pd.DataFrame) -> None:
    assert (table["energy_kwh"] > 0).all() and np.isfinite(table["co2_g"]).all()
    assert set(table["energy_source"]) <= ENERGY_SOURCES


SUMMARY_COLUMNS = ("accuracy_pct", "accuracy_pct_std", "n_seeds", "training_gflops_millions", "energy_kwh",
                   "energy_kwh_pue", "co2_g", "energy_source", "grid_size")


# -- the checks, one per notebook -----------------------------------------------------------------
def check_start_here(out, dirs):
    assert (out / "start_here_stochastic_run.png").stat().st_size > 0
    runs = {p.name.rsplit("-", 1)[0] for p in (dirs["results"] / "runs").iterdir()}
    # The paper's architectures (ResNet18 teacher, MobileNetV2 student), on digits.
    assert {"teacher_digits_resnet18_s0", "kd_digits_resnet18-to-mobilenetv2_hkd_tauU2,20_s0"} <= runs


def check_table1(out, dirs):
    table = read_table(out, "table1", ("dataset", "method", "model", *SUMMARY_COLUMNS))
    assert len(table) == 3 * 4  # the paper profile's three datasets x (teacher, student, tuned, stochastic)
    assert set(table["dataset"]) == {"cifar10", "cifar100", "tinyimagenet"}
    assert table.groupby("dataset")["method"].apply(list).map(
        lambda m: m == ["teacher", "student", "kd_tuned", "kd_stochastic"]).all()
    assert set(table["model"]) == {"resnet18", "mobilenetv2"}
    finite_accuracies(table)
    energy_ok(table)
    assert (table["n_seeds"] == 1).all()
    assert set(table.loc[table["method"] == "kd_tuned", "grid_size"]) == {2}
    ratios = read_table(out, "table1_energy_ratio", ("dataset", "flops_ratio_tuned_over_stochastic"))
    assert len(ratios) == 3 and np.allclose(ratios["flops_ratio_tuned_over_stochastic"], 2.0)
    comparison = read_table(out, "table1_vs_paper", ("dataset", "method", "metric", "ours", "paper"))
    assert set(comparison["dataset"]) == {"cifar10", "cifar100", "tinyimagenet"}


def check_table4(out, dirs):
    table = read_table(out, "table4", ("dataset", "loss", "method", *SUMMARY_COLUMNS))
    assert len(table) == 3 * 2 and set(table["dataset"]) == {"cifar10"}
    assert set(zip(table["loss"], table["method"])) == {
        (loss, method) for loss in ("hkd", "cmc", "dml") for method in ("kd_tuned", "kd_stochastic")}
    finite_accuracies(table)
    energy_ok(table)
    ratios = read_table(out, "table4_energy_ratio", ("dataset", "loss", "flops_ratio_tuned_over_stochastic"))
    assert len(ratios) == 3 and np.allclose(ratios["flops_ratio_tuned_over_stochastic"], 2.0)


def check_figure1(out, dirs):
    curves = read_table(out, "figure1_training_curves", ("method", "epoch", "co2_g"))
    assert set(curves["method"]) == {"teacher", "student", "kd_tuned", "kd_stochastic"}
    assert np.isfinite(curves["co2_g"]).all()
    totals = read_table(out, "figure1_training_totals", ("method", "co2_g"))
    assert len(totals) == 4
    inference = read_table(out, "figure1_inference", ("method", "n_images", "time_per_pass_s", "co2_g_per_pass"))
    assert list(inference["method"]) == ["teacher", "student", "kd_tuned", "kd_stochastic"]
    assert (inference["n_images"] == 10).all() and (inference["time_per_pass_s"] > 0).all()


def check_figure4(out, dirs):
    outputs = read_table(out, "figure4a_outputs", ("method", "probability"))
    assert set(outputs["method"]) == {"teacher", "kd_tuned", "kd_stochastic"}
    assert np.allclose(outputs.groupby("method")["probability"].sum(), 1.0, atol=1e-5)
    cams = read_table(out, "figure4b_gradcam", ("method", "image_index", "heatmap_std"))
    assert set(cams["method"]) == {"kd_tuned", "kd_stochastic"} and cams["image_index"].nunique() == 4
    assert np.isfinite(cams["heatmap_std"]).all()
    confusion = read_table(out, "figure4c_confusion", ("method", "count"))
    assert (confusion.groupby("method")["count"].sum() == 10).all()  # CIFAR-10's test images here
    comparison = read_table(out, "figure4_vs_paper", ("method", "ours"))
    finite_accuracies(comparison, "ours")


def check_table5(out, dirs):
    table = read_table(out, "table5", ("dataset", "method", "n_seeds", "accuracy_pct", "precision", "recall",
                                       "specificity", "kappa", "prevalence", "f1"))
    assert list(table["method"]) == ["teacher", "kd_tuned", "kd_stochastic"]
    assert set(table["dataset"]) == {"cifar10"}
    finite_accuracies(table)
    for metric in ("precision", "recall", "specificity", "prevalence", "f1"):
        assert table[metric].between(0, 1).all(), metric
    per_class = read_table(out, "table5_per_class", ("class_name", "prevalence"))
    assert len(per_class) == 10


def check_figure3(out, dirs):
    taus = read_table(out, "figure3_accuracy_vs_tau", ("temperature", "tau", "accuracy_pct", "energy_kwh"))
    assert sorted(taus.loc[taus["temperature"] == "fixed", "tau"]) == [2.0, 4.0]
    assert (taus["temperature"] == "tuned").sum() == 1 and (taus["temperature"] == "stochastic").sum() == 1
    finite_accuracies(taus)
    batch = read_table(out, "figure3_accuracy_vs_batch_size", ("batch_size", "accuracy_pct"))
    assert list(batch["batch_size"]) == [8, 16]
    finite_accuracies(batch)
    assert set(read_table(out, "figure3_vs_paper_claims", ("panel",))["panel"]) == {"a", "b"}


def check_table7(out, dirs):
    table = read_table(out, "table7", ("dataset", "pair", "teacher", "student", "method", *SUMMARY_COLUMNS))
    assert len(table) == 4 * 2 and set(table["dataset"]) == {"cifar10"}
    assert set(zip(table["teacher"], table["student"])) == {
        (t, s) for t in ("shufflenetv2", "resnet18") for s in ("shufflenetv2", "resnet18")}
    finite_accuracies(table)
    energy_ok(table)
    assert len(read_table(out, "table7_stochastic_vs_tuned", ("pair",))) == 4


def check_table8(out, dirs):
    table = read_table(out, "table8", ("dataset", "method", "model_size_mb", *SUMMARY_COLUMNS))
    assert list(table["method"]) == ["student", "qat", "kd_tuned", "kd_stochastic"]
    assert set(table["dataset"]) == {"cifar10"}
    finite_accuracies(table)
    energy_ok(table)
    qat = read_table(out, "table8_qat_model_size", ("fp32_model_mb", "int8_model_mb", "int8_accuracy_pct"))
    assert (qat["int8_model_mb"] < qat["fp32_model_mb"]).all()
    finite_accuracies(qat, "int8_accuracy_pct")


def check_table6(out, dirs):
    table = read_table(out, "table6", ("dataset", "dfkd_method", "method", "synthesis_gflops_millions",
                                       "student_gflops_millions", "energy_synthesis_kwh", *SUMMARY_COLUMNS))
    assert len(table) == 2 * 2 and set(table["dataset"]) == {"cifar10"}
    assert set(zip(table["dfkd_method"], table["method"])) == {
        (m, w) for m in ("cmi", "deepinversion") for w in ("kd_tuned", "kd_stochastic")}
    finite_accuracies(table)
    energy_ok(table)
    assert (table["synthesis_gflops_millions"] > 0).all()
    grid = read_table(out, "table6_tau_grid", ("dfkd_method", "temperature", "tau", "test_accuracy_pct"))
    assert len(grid) == 2 * (2 + 1)  # per synthesizer: the two grid taus and the stochastic run
    finite_accuracies(grid, "test_accuracy_pct")


def check_table4_detection(out, dirs):
    table = read_table(out, "table4_detection", ("dataset", "loss", "method", "model", "map_pct", "map_pct_std",
                                                 "energy_kwh", "co2_g", "energy_source", "grid_size"))
    assert list(table["method"]) == ["teacher", "kd_tuned", "kd_stochastic"]
    assert list(table["loss"]) == ["ssd", "hkd", "hkd"] and set(table["dataset"]) == {"voc"}
    assert list(table["model"]) == ["vgg16_ssd", "mobilenetv2_ssdlite", "mobilenetv2_ssdlite"]
    finite_accuracies(table, "map_pct")
    energy_ok(table)
    assert len(read_table(out, "table4_detection_vs_paper", ("metric", "paper"))) > 0
    summary = json.loads((out / "table4_detection.summary.json").read_text())
    assert summary["profile"] == "paper"


def check_any(out, dirs, name):
    """A notebook without its own check: it wrote at least one table, and no accuracy in it is NaN."""
    tables = sorted(out.glob("*.csv"))
    assert tables, f"{name} wrote no table"
    for path in tables:
        table = pd.read_csv(path)
        for column in (c for c in table.columns if c.endswith("accuracy_pct")):
            assert np.isfinite(table[column].to_numpy(dtype=float)).all(), f"{path.name}: {column}"


# (notebook, overrides beyond COMMON, check).
PLAN = [
    # Digits has 1,797 images; the paper profile would train on all of them.
    ("00_start_here", {"train_subset": 60, "test_subset": 30}, check_start_here),
    ("table1_carbon_footprint", {}, check_table1),
    ("table4_kd_losses", {"datasets": ["cifar10"]}, check_table4),
    ("figure1_carbon_curves", {"min_inference_s": 0.05}, check_figure1),
    ("figure4_logits_gradcam_confusion", {}, check_figure4),
    ("table5_metrics", {}, check_table5),
    ("figure3_temperature_and_batch", {"batch_sizes": [8, 16]}, check_figure3),
    # The paper's Tiny ImageNet makes ResNet18 students 4x dearer than CIFAR's 32x32 images; Table 1 and
    # Figure 3 already read it.
    ("table7_teacher_student_pairs", {"datasets": ["cifar10"]}, check_table7),
    ("table8_quantization", {"qat_epochs": 1}, check_table8),
    # The paper's rounds: 1,000 (DeepInversion) or 200 (CMI) steps on 256 images, then 400 student steps.
    ("table6_dfkd", {"datasets": ["cifar10"], "synthesis_iterations": 2, "synthesis_batch_size": 8,
                     "student_steps": 2}, check_table6),
    # SSD300's 300x300 images, and 8 DataLoader workers for its augmentation, are for a GPU machine.
    ("table4_detection", {"losses": ["hkd"], "image_size": 32, "num_workers": 0}, check_table4_detection),
]
PLANNED = [name for name, _, _ in PLAN]
NOTEBOOKS = sorted(p.stem for p in (REPO / "notebooks").glob("*.ipynb"))
RUNS = PLAN + [(name, {}, None) for name in NOTEBOOKS if name not in PLANNED]


# The longest first, so that the two workers end together; Table 1 trains what most others read.
LONGEST_FIRST = ("table1_carbon_footprint", "table7_teacher_student_pairs", "table6_dfkd", "00_start_here",
                 "table4_detection", "table4_kd_losses", "figure4_logits_gradcam_confusion")


@pytest.fixture(scope="module")
def paper_runs(tmp_path_factory, data_root):
    """Every notebook executed once at the paper profile, two at a time (one per core, one thread each)."""
    root = tmp_path_factory.mktemp("paper_profile")
    jobs = []
    for name, overrides, _ in RUNS:
        parameters = {**COMMON, "data_root": str(data_root), **overrides}
        parameters = {k: v for k, v in parameters.items() if k in declared_knobs(name)}
        parameters.update(profile="paper", results_dir=str(root / "results"), output_dir=str(root / name))
        jobs.append(Job(name, parameters, root / name))
    jobs.sort(key=lambda job: LONGEST_FIRST.index(job.name) if job.name in LONGEST_FIRST else len(LONGEST_FIRST))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "GREENKD_PROGRESS": "0"}
    env.pop("GREENKD_DATA_ROOT", None)  # only the data root written here
    outcomes = run_concurrently(jobs, workers=min(2, os.cpu_count() or 1), env=env)
    return {"results": root / "results", "outcomes": outcomes, "root": root}


def test_every_notebook_is_run_at_the_paper_profile():
    assert set(PLANNED) <= set(NOTEBOOKS), f"planned but missing: {sorted(set(PLANNED) - set(NOTEBOOKS))}"
    assert {name for name, _, _ in RUNS} == set(NOTEBOOKS)


@pytest.mark.parametrize("name, overrides, check", RUNS, ids=[name for name, _, _ in RUNS])
def test_notebook_runs_at_the_paper_profile(name, overrides, check, paper_runs):
    outcome = paper_runs["outcomes"][name]
    assert outcome.returncode == 0, f"{name} failed after {outcome.seconds:.0f} s:\n{outcome.output[-6000:]}"
    out = paper_runs["root"] / name
    executed = json.loads((out / f"{name}.ipynb").read_text())
    injected = next(c for c in executed["cells"] if "injected-parameters" in c["metadata"].get("tags", []))
    assert 'profile = "paper"' in "".join(injected["source"])
    dirs = {"results": paper_runs["results"]}
    if check is None:
        check_any(out, dirs, name)
    else:
        check(out, dirs)

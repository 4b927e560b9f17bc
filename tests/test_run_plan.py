"""The run plan and its bill: every notebook's runs collected once with their edges, the projection from a
one-epoch calibration, ``run_all.sh --plan`` training nothing, and the Slurm template's syntax."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from greenkd_utils.core.config import TemperatureSpec
from greenkd_utils.paper.needed_runs import NOTEBOOKS, check_notebook, plan_notebooks
from greenkd_utils.runs.executors import LocalExecutor
from greenkd_utils.runs.plan import RunPlan
from greenkd_utils.runs.projection import (
    calibration_config,
    calibration_store,
    measured_beside_projected,
    project,
)
from greenkd_utils.runs.store import RunStore

REPO = Path(__file__).resolve().parent.parent
SBATCH = REPO / "scripts" / "slurm" / "greenkd.sbatch"


def test_every_notebook_has_a_run_plan():
    assert sorted(NOTEBOOKS) == sorted(p.stem for p in (REPO / "notebooks").glob("*.ipynb"))
    with pytest.raises(ValueError, match="no notebook 'table9' has a run plan; valid: 00_start_here"):
        check_notebook("table9")


def test_a_plan_holds_each_run_once_after_the_runs_it_needs(smoke):
    plan = RunPlan()
    students = [smoke.kd_config("digits", s, "hkd", TemperatureSpec.fixed(t)) for s in (0, 1) for t in (2.0, 4.0)]
    plan.add_all(students, "a")
    plan.add_all(students[:2], "b")  # a second notebook needing the same runs adds nothing
    teachers = {s.teacher.key for s in students}
    assert len(plan) == len(students) + len(teachers) == 6
    order = [run.key for run in plan.order()]
    for s in students:
        assert order.index(s.teacher.key) < order.index(s.key)
        assert plan.runs[s.key].dependencies == [s.teacher.key]
    assert plan.runs[students[0].key].needed_by == ["a", "b"]
    assert plan.runs[students[0].teacher.key].needed_by == ["a", "b"]  # b needs the teacher through them


def test_longest_chains_of_work_start_first_and_dependencies_still_come_first(smoke):
    plan = RunPlan()
    light = [smoke.kd_config("digits", 0, "hkd", TemperatureSpec.fixed(t)) for t in (2.0, 4.0)]
    heavy = smoke.kd_config("digits", 1, "hkd", TemperatureSpec.fixed(2.0))
    plan.add_all([*light, heavy], "a")  # added first, the light runs come first in plain order
    seconds = {light[0].teacher.key: 5.0, light[0].key: 1.0, light[1].key: 1.0,
               heavy.teacher.key: 5.0, heavy.key: 30.0}
    order = [run.key for run in plan.longest_first(seconds)]
    assert order == [heavy.teacher.key, heavy.key, light[0].teacher.key, light[0].key, light[1].key]
    assert [run.key for run in plan.order()][0] == light[0].teacher.key
    # Without projections every run weighs one second: still every run once, after the runs it needs.
    unweighted = [run.key for run in plan.longest_first({})]
    assert sorted(unweighted) == sorted(order)
    for run in plan.runs.values():
        assert all(unweighted.index(d) < unweighted.index(run.key) for d in run.dependencies)


def test_the_demo_plan_shares_teachers_across_notebooks(tmp_path):
    _, plan = plan_notebooks(profile="demo", results_dir=tmp_path)
    by_notebook = plan.by_notebook()
    # Every notebook needs runs but the one that only reads the store.
    assert set(by_notebook) == set(NOTEBOOKS) - {"explore_runs"}
    # Table 1's runs are a subset of Table 4's plus its teachers and students; Figures 1 and 4 reuse them.
    assert {r.key for r in by_notebook["figure4_logits_gradcam_confusion"]} <= {
        r.key for r in by_notebook["table1_carbon_footprint"]}
    assert len(plan) < sum(len(runs) for runs in by_notebook.values())
    assert any("successive halving" in note for note in plan.adaptive)


def test_calibration_is_two_epochs_of_the_same_shape(smoke):
    config = smoke.kd_config("digits", 3, "dml", TemperatureSpec.fixed(7.0))
    shape = calibration_config(config)
    assert shape.train.epochs == 2 and shape.seed == 0 and shape.temperature.tau == 4.0
    assert shape.teacher.train.epochs == 2 and shape.teacher.seed == 0
    assert (shape.model, shape.loss, shape.train.batch_size) == (config.model, config.loss, config.train.batch_size)
    # Every fixed tau and seed of a grid shares one calibration.
    assert calibration_config(config.replace(seed=1, temperature=TemperatureSpec.fixed(2.0))).key == shape.key


def test_the_projection_counts_the_flops_the_runs_then_count(tmp_path):
    store, plan = plan_notebooks(["00_start_here"], "smoke", tmp_path)
    bill = project(plan, store, "smoke", pue=1.67, carbon_intensity_g_per_kwh=294.0, device="cpu")
    assert bill.n_cached == 0 and len(bill.runs) == len(plan) == 2  # seed 0's teacher and stochastic student
    assert not any(store.is_finished(run.config) for run in plan.order())  # billing trains nothing of the plan
    totals = bill.totals
    assert totals["energy_kwh"] > 0 and totals["device_hours"] > 0
    assert totals["co2_g"] == pytest.approx(totals["energy_kwh"] * 1.67 * 294.0)
    LocalExecutor().run(plan, store, device="cpu", progress=False)
    compared = measured_beside_projected(bill.to_dict(), store)
    assert compared["runs_compared"] == 2 and compared["runs_not_in_store"] == []
    t = compared["totals"]
    # FLOPs per epoch do not depend on seed or tau: the projection is the count.
    assert t["projected_training_flops"] == pytest.approx(t["measured_training_flops"], rel=1e-9)
    assert 0 < t["projected_energy_kwh"] and 0 < t["measured_energy_kwh"]
    # A second bill finds everything cached and costs nothing to project.
    again = project(plan, store, "smoke", 1.67, 294.0, device="cpu")
    assert again.n_cached == 2 and again.runs == [] and again.calibration_wall_time_s == 0


def test_a_teacher_pass_done_once_per_run_is_projected_once(tmp_path, smoke):
    import dataclasses

    from greenkd_utils.core.config import AugmentSettings

    base = smoke.kd_config("digits", 0, "hkd", TemperatureSpec.fixed(4.0))
    config = base.replace(train=dataclasses.replace(
        base.train, epochs=4, augment=AugmentSettings(crop_padding=0, flip=False, rotation_deg=0.0)))
    plan = RunPlan()
    plan.add(config, "test")
    store = RunStore(tmp_path / "store")
    bill = project(plan, store, "smoke", 1.67, 294.0, device="cpu")
    LocalExecutor().run(plan, store, device="cpu", progress=False)
    record = store.load_result(config)
    assert record["flops"]["teacher_outputs_reused"] is True  # no augmentation: one teacher pass per run
    projected = {r.key: r.training_flops for r in bill.runs}
    assert projected[config.key] == pytest.approx(record["flops"]["training_flops"], rel=1e-9)
    # Four epochs cost less than twice the two-epoch calibration, which paid the teacher pass too.
    calibration = calibration_store(store.root, "cpu").load_result(calibration_config(config))
    assert projected[config.key] < 2 * calibration["flops"]["training_flops"]


def test_run_all_plan_lists_and_bills_without_training(tmp_path):
    results, out = tmp_path / "results", tmp_path / "figures"
    done = subprocess.run(
        ["bash", str(REPO / "run_all.sh"), "--plan", "--profile", "smoke", "--results-dir", str(results),
         "--output-dir", str(out), "--only", "00_start_here"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "GREENKD_PROGRESS": "0"},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "PROJECTED bill of the 2 run(s) still to train" in done.stdout
    assert re.search(r"teacher_digits_wrn16_1_s0 +classification +\d+ +no", done.stdout)
    assert not list((results / "runs").glob("*/result.json"))  # nothing of the plan was trained
    assert (out / "plan.json").is_file()  # the bill lands beside the figures, for the manifest


def test_run_all_refuses_an_unknown_executor():
    done = subprocess.run(["bash", str(REPO / "run_all.sh"), "--executor", "dask"], capture_output=True, text=True)
    assert done.returncode == 2 and "unknown executor 'dask'; valid: local ray" in done.stderr
    done = subprocess.run(["bash", str(REPO / "run_all.sh"), "--profile", "smoke", "--address", "auto"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "--address is a Ray cluster's" in done.stderr


# -- the Slurm template -------------------------------------------------------------------------------
SBATCH_OPTIONS = {"job-name", "nodes", "ntasks-per-node", "gpus-per-node", "cpus-per-task", "mem", "time",
                  "output", "error", "partition", "account", "gres", "constraint", "exclusive", "qos"}


def test_the_sbatch_template_is_valid_bash():
    done = subprocess.run(["bash", "-n", str(SBATCH)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_the_sbatch_directives_come_first_and_are_well_formed():
    lines = SBATCH.read_text().splitlines()
    assert lines[0].startswith("#!")
    first_command = next(i for i, line in enumerate(lines) if line.strip() and not line.startswith("#"))
    directives = [(i, line) for i, line in enumerate(lines) if line.startswith("#SBATCH")]
    assert directives and all(i < first_command for i, _ in directives), "sbatch ignores #SBATCH after a command"
    for _, line in directives:
        match = re.fullmatch(r"#SBATCH --([a-z-]+)(?:=(\S+))?", line)
        assert match, f"malformed directive: {line!r}"
        assert match.group(1) in SBATCH_OPTIONS, f"unknown sbatch option in {line!r}"
        if match.group(1) == "time":
            assert re.fullmatch(r"(\d+-)?\d{1,2}:\d{2}:\d{2}", match.group(2))


def test_the_sbatch_template_calls_run_all_with_flags_it_accepts():
    text = SBATCH.read_text()
    call = re.search(r'"\$repo/run_all.sh"(.*?)\n\n', text, re.S).group(1)
    flags = set(re.findall(r"(--[a-z-]+)", call))
    accepted = set(re.findall(r"^\s+(--[a-z-]+)\)", (REPO / "run_all.sh").read_text(), re.M))
    assert {"--profile", "--executor", "--address", "--data-root", "--results-dir"} <= flags <= accepted
    assert "--executor ray" in call.replace("\\\n", " ").replace("  ", " ")
    assert "scripts/slurm/greenkd.sbatch" in (REPO / "docs" / "clusters.md").read_text()


def test_the_sbatch_template_names_what_it_lacks_and_the_cluster_it_cannot_reach(tmp_path):
    import socket

    env = {k: v for k, v in os.environ.items() if not k.startswith(("GREENKD_", "SLURM_"))}
    done = subprocess.run(["bash", str(SBATCH)], cwd=REPO, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 1 and "the paper profile needs GREENKD_DATA_ROOT" in done.stderr, done.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    env.update(GREENKD_PROFILE="smoke", GREENKD_RAY_ADDRESS=address, GREENKD_RAY_TMPDIR=str(tmp_path))
    done = subprocess.run(["bash", str(SBATCH)], cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"cannot reach the Ray cluster at {address}: ConnectionRefusedError" in done.stderr, done.stderr


@pytest.fixture
def stale_ray_session():
    """A Ray temporary folder whose session file names a head that died without cleaning up (a killed
    ``ray start --head``): the environment that points Ray at it."""
    import shutil
    import socket
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="gkray", dir="/tmp"))  # short: Ray's socket paths live in it
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    (folder / "ray").mkdir()
    (folder / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{dead_port}")
    yield {"RAY_TMPDIR": str(folder)}
    shutil.rmtree(folder, ignore_errors=True)


def test_run_all_with_ray_trains_renders_and_sets_the_bill_beside_the_measurement(tmp_path, stale_ray_session):
    import json

    results, out = tmp_path / "results", tmp_path / "figures"
    # Without --address the executor starts a runtime of its own, whatever a stale session file says.
    done = subprocess.run(
        ["bash", str(REPO / "run_all.sh"), "--profile", "smoke", "--executor", "ray", "--results-dir", str(results),
         "--output-dir", str(out), "--only", "00_start_here"],
        capture_output=True, text=True, timeout=900,
        env={**os.environ, "GREENKD_PROGRESS": "0", **stale_ray_session},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (out / "00_start_here.ipynb").is_file() and (out / "00_start_here.log").is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    bill = manifest["bill_projected_and_measured"]
    assert bill["projected"]["label"] == "projected"
    assert bill["measured"]["runs_compared"] == 2
    totals = bill["measured"]["totals"]
    assert totals["projected_training_flops"] == pytest.approx(totals["measured_training_flops"], rel=1e-9)
    # Per kind of run: the two runs are classification, with their ratios of projected over measured.
    kinds = bill["measured"]["by_kind"]
    assert set(kinds) == {"classification"} and kinds["classification"]["runs"] == 2
    assert kinds["classification"]["flops_ratio"] == pytest.approx(1.0, rel=1e-9)
    assert kinds["classification"]["energy_ratio"] > 0 and kinds["classification"]["device_time_ratio"] > 0
    store = RunStore(results)
    trained = [e for e in store.training_log() if e["event"] == "started"]
    assert len(trained) == 2 and {e["executor"] for e in trained} == {"ray"}
    # The notebook found both runs in the store: it trained nothing itself.
    executed = (out / "00_start_here.ipynb").read_text()
    assert "0 run(s) trained, 2 found in the store" in executed

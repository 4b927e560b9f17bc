"""The Ray executor on a real local Ray runtime (2 CPUs), at the smoke profile: the same records as the local
executor, a killed worker retried and resumed from its checkpoint, a shared teacher trained once, and two
invocations against one store training nothing twice (the store's training log is the witness)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from greenkd_utils.core.config import TemperatureSpec  # noqa: E402
from greenkd_utils.paper.needed_runs import plan_notebooks  # noqa: E402
from greenkd_utils.runs.executors import LocalExecutor, RayExecutor, make_executor  # noqa: E402
from greenkd_utils.runs.plan import RunPlan  # noqa: E402
from greenkd_utils.runs.store import RunStore  # noqa: E402
from tiny_runs import train_past_first_checkpoint  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ray_runtime():
    """One local Ray runtime with 2 CPUs for the module (starting one costs seconds)."""
    # address="local": a runtime of its own, whatever cluster a session file left in Ray's temporary folder names.
    ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield
    ray.shutdown()


def starts(store: RunStore) -> Counter:
    return Counter(e["key"] for e in store.training_log() if e["event"] == "started")


def test_unknown_executor_names_the_choices():
    with pytest.raises(ValueError, match="unknown executor 'dask'; valid: local, ray"):
        make_executor("dask")
    with pytest.raises(ValueError, match="needs executor='ray'"):
        make_executor("local", address="auto")


def test_ray_gives_the_records_the_local_executor_gives(ray_runtime, tmp_path):
    store_local, plan = plan_notebooks(["00_start_here"], "smoke", tmp_path / "local")
    store_ray, _ = plan_notebooks(["00_start_here"], "smoke", tmp_path / "ray")
    LocalExecutor().run(plan, store_local, device="cpu", progress=False)
    summary = RayExecutor().run(plan, store_ray, device="cpu", progress=False).raise_if_failed()
    assert sorted(summary.trained) == sorted(plan.runs)
    for run in plan.order():
        local, remote = store_local.load_result(run.config), store_ray.load_result(run.config)
        # One thread per process on both sides: the same arithmetic, so the same numbers to the last digit.
        assert remote["test_accuracy"] == local["test_accuracy"]
        assert [h["train_loss"] for h in remote["history"]] == [h["train_loss"] for h in local["history"]]
        assert remote["flops"]["training_flops"] == local["flops"]["training_flops"]
        assert local["execution"]["executor"] == "local" and local["execution"]["runs_sharing_node"] == 1
        assert remote["execution"]["executor"] == "ray" and remote["execution"]["runs_sharing_node"] == 2
        assert "own process CPU time" in remote["execution"]["energy_attribution"]
        assert remote["execution"]["pid"] != os.getpid()  # trained in a Ray worker, not here
    # The teacher (every student's dependency) was trained once, before the students.
    assert set(starts(store_ray).values()) == {1}


def test_a_shared_teacher_is_trained_once_when_its_students_start_together(ray_runtime, tmp_path, smoke):
    store = RunStore(tmp_path / "store")
    students = [smoke.kd_config("digits", 0, "hkd", TemperatureSpec.fixed(tau)) for tau in (2.0, 8.0)]
    plan = RunPlan()
    plan.add_all(students, "test")
    teacher_key = students[0].teacher.key
    # Leave the teacher out of the graph: both students ask the store for it at the same time.
    del plan.runs[teacher_key]
    for run in plan.runs.values():
        run.dependencies = []
    RayExecutor().run(plan, store, device="cpu", progress=False).raise_if_failed()
    counts = starts(store)
    assert counts[teacher_key] == 1
    assert all(counts[s.key] == 1 for s in students)


def test_a_killed_worker_is_retried_and_resumes_from_its_checkpoint(ray_runtime, tmp_path, smoke):
    config = smoke.student_config("digits", 0).replace(
        train=smoke.train_settings("student", epochs=60), train_subset=256)
    store = RunStore(tmp_path / "killed")
    worker, result, plan = train_past_first_checkpoint(RayExecutor(retries=2), config, store, 120)
    victim = [e for e in store.training_log() if e["key"] == config.key][0]["pid"]
    os.kill(victim, signal.SIGKILL)
    worker.join(timeout=300)
    assert result["summary"].failed == {}
    log = [e for e in store.training_log() if e["key"] == config.key and e["event"] == "started"]
    assert len(log) == 2, log
    assert log[0]["from_epoch"] == 0 and log[1]["from_epoch"] >= 1
    assert log[1]["pid"] != victim
    resumed = store.load_result(config)
    assert [h["epoch"] for h in resumed["history"]] == list(range(1, 61))
    # Resuming is exact: the same numbers as a run never interrupted.
    whole = RunStore(tmp_path / "whole")
    LocalExecutor().run(plan, whole, device="cpu", progress=False)
    uninterrupted = whole.load_result(config)
    assert resumed["test_accuracy"] == uninterrupted["test_accuracy"]
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in uninterrupted["history"]]


def test_two_invocations_against_one_store_train_nothing_twice(tmp_path):
    results = tmp_path / "shared"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GREENKD_PROGRESS": "0"}
    command = [sys.executable, "-m", "greenkd_utils.paper.plan", "--profile", "smoke", "--results-dir", str(results),
               "--only", "table1_carbon_footprint", "--execute"]
    first = subprocess.Popen(command + ["--executor", "ray"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    second = subprocess.Popen(command + ["--executor", "local"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    outputs = [p.communicate(timeout=600)[0] for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, "\n".join(o[-3000:] for o in outputs)
    store, plan = plan_notebooks(["table1_carbon_footprint"], "smoke", results)
    counts = starts(store)
    assert set(counts) == set(plan.runs)
    assert set(counts.values()) == {1}, {k: v for k, v in counts.items() if v > 1}
    assert all(store.is_finished(run.config) for run in plan.order())

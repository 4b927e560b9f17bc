"""The Ray executor on a Ray cluster of several nodes (``ray.cluster_utils.Cluster``: a head without CPUs and two
one-CPU workers, all on this machine): the smoke plan driven with ``--executor ray --address`` spreads over the
nodes and gives the local executor's numbers, and a run whose node is removed mid-training is retried on a
surviving node, resumes from its checkpoint and ends as an uninterrupted run does. An address where no cluster
answers is an error that names it."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections import Counter
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from ray.cluster_utils import Cluster  # noqa: E402

from greenkd_utils.paper.needed_runs import plan_notebooks  # noqa: E402
from greenkd_utils.paper.plan import main as plan_cli  # noqa: E402
from greenkd_utils.runs.executors import LocalExecutor, RayExecutor, start_ray  # noqa: E402
from greenkd_utils.runs.store import RunStore  # noqa: E402
from tiny_runs import train_past_first_checkpoint  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
# Four runs: a teacher, then three students at once, more than one worker node holds.
NOTEBOOK = "figure4_logits_gradcam_confusion"
# What a run's history holds besides the training itself: time and energy differ between any two runs.
NOT_TRAINING = {"wall_time_s", "energy_kwh", "energy_source"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def training_numbers(record: dict) -> dict:
    """Every number a run's training produced: accuracies, the taus it drew, FLOPs, the per-epoch history."""
    history = [{k: v for k, v in row.items() if k not in NOT_TRAINING} for row in record["history"]]
    return {"test_accuracy": record["test_accuracy"], "val_accuracy": record["val_accuracy"], "tau": record["tau"],
            "flops": record["flops"], "history": history, "extras": record.get("extras", {})}


def starts(store: RunStore, key: str) -> list:
    return [e for e in store.training_log() if e["key"] == key and e["event"] == "started"]


def parent_pid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[1])


def test_an_unreachable_cluster_is_an_error_naming_its_address():
    ray.shutdown()  # a runtime already up would be reused, and nothing would be reached for
    address = f"127.0.0.1:{free_port()}"
    began = time.monotonic()
    with pytest.raises(ConnectionError, match=rf"cannot reach the Ray cluster at '{address}': ConnectionRefusedError"):
        start_ray(address)
    assert time.monotonic() - began < 30  # not Ray's minutes of retries
    assert not ray.is_initialized()


@pytest.fixture(scope="module")
def cluster():
    """A head that runs nothing and two workers of one CPU each: whatever trains, trains on a worker."""
    # A dead node is noticed after two missed health checks a second apart (Ray's default: five, three apart).
    health = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 1000, "health_check_failure_threshold": 2}
    ray.shutdown()  # the driver must join this cluster, not reuse a runtime already up
    made = Cluster(initialize_head=True, connect=False,
                   head_node_args={"num_cpus": 0, "include_dashboard": False, "_system_config": health})
    workers = [made.add_node(num_cpus=1) for _ in range(2)]
    made.wait_for_nodes(timeout=120)  # a busy machine starts nodes slowly
    # Registered is not yet schedulable: wait until the scheduler sees both workers' CPUs.
    start_ray(made.address)
    deadline = time.monotonic() + 60
    while ray.available_resources().get("CPU", 0) < len(workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    yield made, workers
    ray.shutdown()
    made.shutdown()


def test_the_smoke_plan_spreads_over_the_nodes_with_the_local_executors_numbers(cluster, tmp_path, monkeypatch):
    made, workers = cluster
    monkeypatch.setenv("GREENKD_PROGRESS", "0")
    results = tmp_path / "cluster"
    # run_all.sh's training step, in this process (a second interpreter would import torch again).
    code = plan_cli(["--profile", "smoke", "--results-dir", str(results), "--only", NOTEBOOK, "--execute",
                     "--executor", "ray", "--address", made.address])
    assert code == 0
    store, plan = plan_notebooks([NOTEBOOK], "smoke", results)
    assert len(plan) == 4
    local = RunStore(tmp_path / "local")
    LocalExecutor().run(plan, local, device="cpu", progress=False)
    nodes = {}
    for run in plan.order():
        remote, reference = store.load_result(run.config), local.load_result(run.config)
        assert training_numbers(remote) == training_numbers(reference), run.name
        execution = remote["execution"]
        assert execution["executor"] == "ray" and execution["node_ip"]
        # Two one-CPU Ray nodes on one machine: up to two runs shared it, and the record says so.
        assert execution["runs_sharing_node"] == 2
        assert reference["execution"]["ray_node_id"] is None and reference["execution"]["runs_sharing_node"] == 1
        nodes[run.name] = execution["ray_node_id"]
    assert set(nodes.values()) <= {w.node_id for w in workers}
    assert len(set(nodes.values())) > 1, f"every run trained on one node: {nodes}"


def test_a_run_whose_node_is_removed_resumes_on_a_surviving_node(cluster, tmp_path, smoke):
    made, workers = cluster
    config = smoke.student_config("digits", 0).replace(train=smoke.train_settings("student", epochs=30),
                                                       train_subset=256)
    store = RunStore(tmp_path / "store")
    driver, result, plan = train_past_first_checkpoint(RayExecutor(address=made.address, retries=2), config, store, 180)
    pid = starts(store, config.key)[0]["pid"]
    # A Ray worker process is a child of its node's raylet.
    raylets = {node.all_processes["raylet"][0].process.pid: node for node in workers}
    victim = raylets[parent_pid(pid)]
    made.remove_node(victim, allow_graceful=False)
    try:
        os.kill(pid, signal.SIGKILL)  # a lost machine takes its processes with it
    except ProcessLookupError:
        pass
    driver.join(timeout=300)
    assert not driver.is_alive(), "the run was not retried within 300 s"
    assert result["summary"].failed == {} and result["summary"].trained == [config.key]

    log = starts(store, config.key)
    assert len(log) == 2, log  # trained once, resumed once: nothing trained twice
    assert log[0]["from_epoch"] == 0 and log[1]["from_epoch"] >= 1
    resumed = store.load_result(config)
    survivor = next(w for w in workers if w is not victim)
    assert resumed["execution"]["ray_node_id"] == survivor.node_id != victim.node_id
    assert [h["epoch"] for h in resumed["history"]] == list(range(1, 31))  # no epoch lost, none twice
    whole = RunStore(tmp_path / "whole")
    LocalExecutor().run(plan, whole, device="cpu", progress=False)
    assert training_numbers(resumed) == training_numbers(whole.load_result(config))
    assert Counter(e["key"] for e in whole.training_log())[config.key] == 1

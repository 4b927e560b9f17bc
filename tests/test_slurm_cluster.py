"""scripts/slurm/greenkd.sbatch submitted to a real Slurm: the one-host cluster of scripts/slurm/local_cluster.sh
(Debian's slurm-wlm and munge, installed when missing). The job starts Ray in its allocation, trains the smoke
profile's runs of one notebook on it and renders the notebook; a second submission finds every run in the
shared store. Skipped only where apt-get cannot install the packages."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from greenkd_utils.paper.needed_runs import plan_notebooks
from greenkd_utils.runs.store import RunStore

REPO = Path(__file__).resolve().parent.parent
LOCAL_CLUSTER = REPO / "scripts" / "slurm" / "local_cluster.sh"
SBATCH = REPO / "scripts" / "slurm" / "greenkd.sbatch"
NOTEBOOK = "00_start_here"
FIGURES = ("start_here_softmax_temperature", "start_here_stochastic_run", "start_here_tau_explorer")
JOB_TIMEOUT_S = 420
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
                "BOOT_FAIL", "DEADLINE"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def slurm():
    """A running one-host Slurm, in a folder and on ports of its own; the environment that reaches it."""
    # Short: munged's socket path lives in it.
    folder = Path(tempfile.mkdtemp(prefix="gkslurm", dir="/tmp"))
    env = {**os.environ, "GREENKD_SLURM_DIR": str(folder), "GREENKD_SLURMCTLD_PORT": str(free_port()),
           "GREENKD_SLURMD_PORT": str(free_port())}
    started = subprocess.run(["bash", str(LOCAL_CLUSTER), "start"], env=env, capture_output=True, text=True,
                             timeout=900)
    if started.returncode == 3:
        shutil.rmtree(folder, ignore_errors=True)
        why = [line for line in started.stderr.splitlines() if "cannot install" in line] or ["(no reason given)"]
        pytest.skip(f"no local Slurm: {why[0]}")
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield {**env, "SLURM_CONF": str(folder / "slurm.conf")}
    finally:
        pids = [int(p.read_text()) for p in folder.glob("*.pid") if p.read_text().strip()]
        stopped = subprocess.run(["bash", str(LOCAL_CLUSTER), "stop"], env=env, capture_output=True, text=True,
                                 timeout=120)
        shutil.rmtree(folder, ignore_errors=True)
        assert stopped.returncode == 0, stopped.stderr
        assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()], "a Slurm daemon outlived stop"


def job_state(job: str, env: dict) -> str:
    shown = subprocess.run(["scontrol", "show", "job", "--oneliner", job], env=env, capture_output=True, text=True)
    match = re.search(r"\bJobState=(\S+)", shown.stdout)
    return match.group(1) if match else "UNKNOWN"


def submit(env: dict, log: Path, cpus: int) -> tuple:
    """Submit the template as a user of a small allocation would; wait for its end (bounded)."""
    submitted = subprocess.run(
        ["sbatch", "--parsable", "--nodes=1", f"--cpus-per-task={cpus}", "--gpus-per-node=0", "--time=00:15:00",
         f"--output={log}", str(SBATCH)], env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip().split(";")[0]
    deadline = time.monotonic() + JOB_TIMEOUT_S
    state = job_state(job, env)
    while state not in FINAL_STATES and time.monotonic() < deadline:
        time.sleep(1)
        state = job_state(job, env)
    if state not in FINAL_STATES:
        subprocess.run(["scancel", job], env=env)
    text = log.read_text() if log.is_file() else "(no job log)"
    assert state == "COMPLETED", f"job {job} ended {state}; its log:\n{text[-6000:]}"
    return job, text


def processes_of_job(job: str, env: dict) -> list:
    """Processes still alive that the job started: Slurm puts the job id in their environment, beside the
    configuration of the cluster that ran it (another one-host Slurm here numbers its jobs from 1 too)."""
    marks = {f"SLURM_JOB_ID={job}".encode(), f"SLURM_CONF={env['SLURM_CONF']}".encode()}
    left = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marks <= set(environ):
            left.append(f"{proc.name}: {command[:200]}")
    return left


@contextlib.contextmanager
def log_on_failure(job: str, log: str):
    """Any failed check below says what the job printed."""
    try:
        yield
    except Exception as err:
        raise AssertionError(f"{type(err).__name__}: {err}\n--- the log of job {job} ---\n{log[-6000:]}") from err


def test_the_template_trains_and_renders_on_slurm_and_a_second_job_trains_nothing(slurm, tmp_path):
    results, out = tmp_path / "results", tmp_path / "figures"
    ray_tmp = Path(tempfile.mkdtemp(prefix="gkray", dir="/tmp"))  # short: Ray's socket paths live in it
    cpus = int(subprocess.run(["sinfo", "--noheader", "--format=%c"], env=slurm, capture_output=True,
                              text=True).stdout.split()[0])
    env = {**slurm, "GREENKD_PROFILE": "smoke", "GREENKD_RESULTS_DIR": str(results), "GREENKD_OUTPUT_DIR": str(out),
           "GREENKD_ONLY": NOTEBOOK, "GREENKD_RAY_PORT": str(free_port()), "GREENKD_RAY_TMPDIR": str(ray_tmp),
           "GREENKD_RAY_JOIN_TIMEOUT_S": "120", "GREENKD_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    try:
        job, log = submit(env, tmp_path / "first.log", cpus)
        with log_on_failure(job, log):
            ray_head = re.search(r"Ray head on \S+ at (\S+):(\d+)", log)
            assert ray_head, "the job did not say where its Ray head was"

            # The notebook's outputs, and a manifest that says it rendered.
            for name in FIGURES:
                for suffix in (".png", ".pdf"):
                    assert (out / f"{name}{suffix}").stat().st_size > 0, name
            assert (out / f"{NOTEBOOK}.ipynb").is_file() and (out / f"{NOTEBOOK}.log").is_file()
            manifest = json.loads((out / "manifest.json").read_text())
            assert {n["notebook"]: n["status"] for n in manifest["notebooks"]}[NOTEBOOK] == "ok"

            # Every run trained on the job's Ray, and its record names the job.
            store, plan = plan_notebooks([NOTEBOOK], "smoke", results)
            for run in plan.order():
                execution = store.load_result(run.config)["execution"]
                assert execution["executor"] == "ray" and execution["slurm_job_id"] == job, execution
                assert execution["runs_sharing_node"] == cpus
                assert execution["node_ip"] == ray_head.group(1)

            # The job's Ray is gone with it.
            deadline = time.monotonic() + 30
            while processes_of_job(job, env) and time.monotonic() < deadline:
                time.sleep(1)
            left = processes_of_job(job, env)
            assert not left, f"processes of the job outlived it: {left}"
            with pytest.raises(OSError):
                socket.create_connection((ray_head.group(1), int(ray_head.group(2))), timeout=5).close()

        # Submitted again, the job finds every run in the shared store and trains none.
        started = len(store.training_log())
        again, log = submit(env, tmp_path / "second.log", cpus)
        with log_on_failure(again, log):
            assert again != job
            assert len(store.training_log()) == started, "the second job trained"
            assert f"0 run(s) trained, {len(plan)} found in the store" in log
            assert all(store.load_result(r.config)["execution"]["slurm_job_id"] == job for r in plan.order())
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)

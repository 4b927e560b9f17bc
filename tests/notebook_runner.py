"""Shared helper for the notebook tests: execute a notebook with papermill (smoke profile unless told)."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parent.parent


def kernel_name() -> str:
    from jupyter_client.kernelspec import find_kernel_specs

    return "greenkd" if "greenkd" in find_kernel_specs() else "python3"


def smoke_dirs(root: Path) -> dict:
    return {"results": root / "results", "out": root / "figures"}


def execute(name: str, dirs: dict, profile: str = "smoke", **params) -> Path:
    """Run notebooks/<name>.ipynb at ``profile`` with ``params``; returns the folder it wrote its outputs to.

    At a notebook's defaults, also checks that it trained no run its run plan lacks (what ``run_all.sh``
    collects before the notebooks render)."""
    import papermill as pm

    from greenkd_utils.runs.store import RunStore

    out = dirs["out"]
    out.mkdir(parents=True, exist_ok=True)
    logged_before = len(RunStore(dirs["results"]).training_log())
    pm.execute_notebook(
        str(REPO / "notebooks" / f"{name}.ipynb"),
        str(out / f"{name}.ipynb"),
        parameters={"profile": profile, "results_dir": str(dirs["results"]), "output_dir": str(out), **params},
        kernel_name=kernel_name(),
        cwd=str(REPO / "notebooks"),
        progress_bar=False,
    )
    if not params:
        check_trained_only_planned_runs(name, profile, dirs["results"], logged_before)
    return out


def check_trained_only_planned_runs(name: str, profile: str, results: Path, logged_before: int) -> None:
    """Every run the notebook trained is in its plan, or is a truncated rung of a planned run (successive
    halving, which the plan notes as adaptive)."""
    import json

    from greenkd_utils.paper.needed_runs import plan_notebooks

    store, plan = plan_notebooks([name], profile, results)
    trained = {e["key"]: e["name"] for e in store.training_log()[logged_before:] if e["event"] == "started"}
    unplanned = []
    for key, run_name in trained.items():
        if key in plan:
            continue
        config = json.loads((store.runs_dir / f"{run_name}-{key}" / "config.json").read_text())
        # A successive-halving rung: a planned run cut short (fewer epochs, nothing else changed).
        is_rung = any("successive halving" in note for note in plan.adaptive) and any(
            config["train"]["epochs"] < run.config.train.epochs
            and json.loads(json.dumps(run.config.to_dict()))  # as config.json holds it: lists, not tuples
            == {**config, "train": {**config["train"], "epochs": run.config.train.epochs}}
            for run in plan.runs.values()
        )
        if not is_rung:
            unplanned.append(run_name)
    assert not unplanned, f"{name} trained runs its run plan does not list: {unplanned}"


@dataclass
class Job:
    """One notebook to run: its parameters and the folder it writes to."""

    name: str
    parameters: dict
    out: Path


@dataclass
class Outcome:
    returncode: int
    seconds: float
    output: str  # papermill's log and the kernel's output, for the error message


def run_papermill(job: Job, env: Optional[dict] = None, timeout_s: float = 600) -> Outcome:
    """``python -m papermill`` in its own process, with the parameters as a YAML file (``-f``)."""
    import yaml

    job.out.mkdir(parents=True, exist_ok=True)
    parameters_file = job.out / f"{job.name}.parameters.yaml"
    parameters_file.write_text(yaml.safe_dump(job.parameters))
    command = [
        sys.executable, "-m", "papermill", str(REPO / "notebooks" / f"{job.name}.ipynb"),
        str(job.out / f"{job.name}.ipynb"), "-k", kernel_name(), "--cwd", str(REPO / "notebooks"),
        "-f", str(parameters_file), "--log-output", "--no-progress-bar",
    ]
    start = time.monotonic()
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout_s)
        return Outcome(done.returncode, time.monotonic() - start, done.stdout + done.stderr)
    except subprocess.TimeoutExpired as expired:
        return Outcome(-1, time.monotonic() - start, f"timed out after {timeout_s:g} s\n{expired.stdout or ''}")


def run_concurrently(jobs: List[Job], workers: int, env: Optional[dict] = None) -> Dict[str, Outcome]:
    """Every job, ``workers`` at a time, in the order given.

    Separate processes rather than threads: papermill's ``cwd`` is a process-wide ``chdir``. Notebooks
    that need the same run (a shared teacher) do not train it twice: the run store's per-run file lock
    makes the second wait for the first and then load its result.
    """
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="papermill") as pool:
        futures = {job.name: pool.submit(run_papermill, job, env) for job in jobs}
        return {name: future.result() for name, future in futures.items()}

"""Who trains the runs of a :class:`~greenkd_utils.runs.plan.RunPlan`: this process, one after the other
(``local``), or Ray, in parallel (``ray``).

``ray`` starts a local Ray runtime of its own with every core (and every GPU, one run per GPU), or joins an
existing cluster at ``address``. Each run is one Ray task that calls the lifecycle's ``train``; a run waits for the
runs it needs (its teacher) through Ray's own dependency tracking, so a shared teacher is trained once, before
its students, and the students then fan out. Nothing here is Ray-specific about *what* a run does:

- a worker killed mid-run is retried by Ray (``max_retries``) and the lifecycle resumes from the run's last
  checkpoint;
- the run store's lock per run makes a second invocation (another ``run_all.sh``, another notebook) wait
  for a run in progress and then load it, never train it again;
- each task tells the lifecycle how many runs share its machine, so the record says how its energy was
  attributed (:class:`~greenkd_utils.runs.execution.Concurrency`), and which Ray node trained it.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Optional

from tqdm.auto import tqdm

from greenkd_utils.runs.execution import Concurrency, running_under
from greenkd_utils.runs.lifecycle import train
from greenkd_utils.runs.plan import PlannedRun, RunPlan
from greenkd_utils.runs.store import RunStore

log = logging.getLogger(__name__)

EXECUTORS = ("local", "ray")

# Ray retries a task whose worker died (killed, out of memory) this many times; each retry resumes the run.
RAY_RETRIES = 3


def check_executor(name: Optional[str]) -> str:
    name = "local" if name is None else str(name)
    if name not in EXECUTORS:
        raise ValueError(f"unknown executor {name!r}; valid: {', '.join(EXECUTORS)}")
    return name


@dataclass
class ExecutionSummary:
    """What an executor did with a plan: runs found in the store, runs trained, runs that failed (key -> error)."""

    executor: str
    cached: List[str] = field(default_factory=list)
    trained: List[str] = field(default_factory=list)
    failed: Dict[str, str] = field(default_factory=dict)
    wall_time_s: float = 0.0

    def raise_if_failed(self) -> "ExecutionSummary":
        if self.failed:
            lines = "\n".join(f"  {key}: {error}" for key, error in self.failed.items())
            raise RuntimeError(f"{len(self.failed)} run(s) failed under the {self.executor} executor:\n{lines}")
        return self

    def describe(self) -> str:
        return (f"{self.executor} executor: {len(self.trained)} run(s) trained, {len(self.cached)} found in the store, "
                f"{len(self.failed)} failed, in {self.wall_time_s:.0f} s")


def make_executor(name: Optional[str] = "local", address: Optional[str] = None, **options):
    """The executor called ``name`` (``local`` or ``ray``); ``address`` joins an existing Ray cluster."""
    name = check_executor(name)
    if name == "local":
        if address:
            raise ValueError("address is a Ray cluster's; it needs executor='ray'")
        return LocalExecutor()
    return RayExecutor(address=address, **options)


class LocalExecutor:
    """Every run in this process, dependencies first: today's behaviour of a notebook."""

    name = "local"

    def run(self, plan: RunPlan, store: RunStore, device="auto", data_root=None, progress: bool = True,
            seconds: Optional[Dict[str, float]] = None) -> ExecutionSummary:
        # One run at a time: the order changes nothing (``seconds`` is the parallel executors').
        began = time.perf_counter()
        summary = ExecutionSummary(self.name)
        cached = plan.cached(store)
        summary.cached = [k for k, done in cached.items() if done]
        for run in plan.order():
            if cached[run.key]:
                continue
            train(run.config, store, device, data_root, progress, **run.options)
            summary.trained.append(run.key)
        summary.wall_time_s = time.perf_counter() - began
        return summary


def _train_on_worker(config, store_root: str, device: str, data_root, options: Dict[str, Any],
                     concurrency: Concurrency, *dependencies_done: str) -> str:
    """One Ray task: the lifecycle's ``train`` in a worker process (its dependencies finished before it)."""
    import ray

    # The node is this attempt's: a retry after a lost node records the node that finished the run.
    where = replace(concurrency, ray_node_id=ray.get_runtime_context().get_node_id(),
                                node_ip=ray.util.get_node_ip_address())
    with running_under(where):
        train(config, RunStore(store_root), device, data_root, progress=False, **options)
    return config.key


class RayExecutor:
    """The plan's missing runs as Ray tasks, each after the runs it needs, as many at once as Ray schedules."""

    name = "ray"

    def __init__(self, address: Optional[str] = None, retries: int = RAY_RETRIES, num_cpus: Optional[int] = None):
        self.address = address or None
        self.retries = int(retries)
        self.num_cpus = num_cpus

    def _init(self, ray, device) -> bool:
        """Start or join Ray; whether the runs go to GPUs (decided by the cluster's resources, since the
        driver may sit on a machine without the workers' GPUs)."""
        import torch

        wants_cpu = str(device) == "cpu"
        start_ray(self.address, num_cpus=self.num_cpus, num_gpus=0 if wants_cpu else torch.cuda.device_count())
        gpus = ray.cluster_resources().get("GPU", 0)
        if str(device).startswith("cuda") and gpus < 1:
            raise ValueError(f"device {device!r} was asked for, but the Ray cluster has no GPU; "
                             "use device='cpu' or 'auto', or join a cluster with GPUs")
        return not wants_cpu and gpus >= 1

    def run(self, plan: RunPlan, store: RunStore, device="auto", data_root=None, progress: bool = True,
            seconds: Optional[Dict[str, float]] = None) -> ExecutionSummary:
        """Train the plan's missing runs; ``seconds`` (a run's projected time, by key: the bill's) starts the
        runs that head the longest chains of work first (:meth:`RunPlan.longest_first`)."""
        import ray

        began = time.perf_counter()
        summary = ExecutionSummary(self.name)
        missing = plan.missing(store)
        summary.cached = [run.key for run in plan.order() if run.key not in missing]
        if not len(missing):
            summary.wall_time_s = time.perf_counter() - began
            return summary
        on_gpu = self._init(ray, device)
        per_node = _runs_per_node(ray, on_gpu)
        concurrency = Concurrency(executor="ray", runs_sharing_node=per_node, one_run_per_gpu=on_gpu)
        # SPREAD: runs go round the nodes. Ray's default packs a node first, and its view of a busy node lags,
        # so a burst of ready runs can queue on one node while another sits idle.
        remote = ray.remote(max_retries=self.retries, retry_exceptions=False, scheduling_strategy="SPREAD")(
            _train_on_worker)
        run_device = "cuda" if on_gpu else "cpu"

        refs: Dict[str, Any] = {}
        # Ray starts ready tasks of one shape in the order they were submitted.
        for run in (missing.longest_first(seconds) if seconds else missing.order()):
            deps = [refs[d] for d in run.dependencies]
            refs[run.key] = remote.options(**_resources(run, on_gpu)).remote(
                run.config, str(store.root), run_device, data_root, run.options, concurrency, *deps)
        names = {refs[k]: missing.runs[k] for k in refs}
        pending = list(refs.values())
        with tqdm(total=len(pending), desc=f"runs on Ray ({per_node} at a time)", unit="run",
                  disable=not progress, dynamic_ncols=True) as bar:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    run: PlannedRun = names[ref]
                    try:
                        ray.get(ref)
                        summary.trained.append(run.key)
                    except Exception as err:  # a failed run (or its failed teacher): report, keep the rest going
                        summary.failed[run.key] = f"{run.name}: {_cause(err)}"
                    bar.update(1)
        summary.wall_time_s = time.perf_counter() - began
        return summary


def start_ray(address: Optional[str] = None, **local):
    """Join the Ray cluster at ``address``, or start a local runtime with ``local`` resources (``num_cpus=None``:
    Ray counts the usable cores itself, cgroups and affinity included); nothing if Ray is up already."""
    import ray

    if not ray.is_initialized():
        if address:
            _reach(address)
            try:
                ray.init(address=address, log_to_driver=False)
            except Exception as err:
                raise ConnectionError(
                    f"cannot join the Ray cluster at {address!r}: {type(err).__name__}: {err}") from err
        else:
            # address="local": a runtime of our own, never whatever cluster a stale session file
            # (ray_current_cluster, left by a head that died) or RAY_ADDRESS names.
            ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False, **local)
    return ray


def _reach(address: str, timeout_s: float = 10.0) -> None:
    """Fail at once, naming ``address`` and the error, when nothing answers there: Ray itself retries an
    unreachable head for minutes before it gives up."""
    if address == "auto":
        return  # Ray looks the cluster up itself
    host, _, port = address.replace("ray://", "").rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"a Ray cluster's address is HOST:PORT (or 'auto'); got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise ConnectionError(f"cannot reach the Ray cluster at {address!r}: {type(err).__name__}: {err}") from err


def _resources(run: PlannedRun, on_gpu: bool) -> Dict[str, float]:
    """What one run holds while it trains: one whole GPU on GPUs, one core on CPUs (the CPU profiles run one
    thread per process), plus a core per DataLoader worker it starts (detection's augmentation)."""
    cpus = 1 + int(run.options.get("num_workers", 0) or 0)
    return {"num_gpus": 1 if on_gpu else 0, "num_cpus": cpus}


def _runs_per_node(ray, on_gpu: bool) -> int:
    """How many runs may execute at once on one machine of the cluster (the largest). Ray nodes that share an
    address share a machine (several Ray nodes on one host), so their slots add up."""
    key = "GPU" if on_gpu else "CPU"
    per_host: Dict[str, int] = {}
    for node in ray.nodes():
        if node.get("Alive"):
            host = node.get("NodeManagerAddress", "")
            per_host[host] = per_host.get(host, 0) + int(node.get("Resources", {}).get(key, 0))
    return max([*per_host.values(), 1])


def _cause(err: Exception) -> str:
    cause = getattr(err, "cause", None)
    return f"{type(cause).__name__}: {cause}" if cause is not None else f"{type(err).__name__}: {err}"

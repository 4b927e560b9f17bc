"""``python -m greenkd_utils.paper.render``: execute notebooks with papermill once their runs are in the store,
one after another (``local``) or as Ray tasks, one per core (``ray``). ``run_all.sh`` calls it after training.

Each notebook's seconds and status go to a timings file (the manifest reads it); with Ray, each notebook's
papermill log goes to ``<output>/<name>.log`` instead of the terminal, since several run at once.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from greenkd_utils.runs.executors import EXECUTORS, start_ray

REPO_ROOT = Path(__file__).resolve().parents[2]

# Notebooks that meter work inside their own kernel: Figure 1 times and meters inference passes, the
# beyond-the-paper notebook trains successive halving's rungs. They render after the others, one at a time,
# with nothing else running, so that their numbers are their own.
MEASURES_IN_KERNEL = ("figure1_carbon_curves", "beyond_temperature_strategies")
# The notebook that lists what the store holds renders last, once every other notebook has trained what it trains.
LISTS_THE_STORE = ("explore_runs",)


def render_one(notebook: Path, out: Path, parameters: List[Tuple[str, str]], kernel: str,
               log_file: Optional[Path] = None) -> Tuple[str, float, str]:
    """papermill ``notebook`` into ``out``; returns (name, seconds, "ok" or "failed")."""
    command = [sys.executable, "-m", "papermill", str(notebook), str(out / notebook.name), "-k", kernel,
               "--cwd", str(notebook.parent), "--log-output",
               "--progress-bar" if log_file is None else "--no-progress-bar"]
    for name, value in parameters:
        command += ["-p", name, value]
    began = time.monotonic()
    if log_file is None:
        done = subprocess.run(command)
    else:
        with open(log_file, "w") as log:
            done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
    return notebook.stem, time.monotonic() - began, "ok" if done.returncode == 0 else "failed"


def render(notebooks: List[Path], out: Path, parameters: List[Tuple[str, str]], timings: Path,
           executor: str = "local", address: Optional[str] = None, kernel: str = "greenkd") -> Dict[str, str]:
    """Every notebook rendered; returns name -> status, and appends ``name<TAB>seconds<TAB>status`` to ``timings``."""
    out.mkdir(parents=True, exist_ok=True)
    statuses: Dict[str, str] = {}

    def note(name: str, seconds: float, status: str) -> None:
        statuses[name] = status
        with open(timings, "a") as f:
            f.write(f"{name}\t{round(seconds)}\t{status}\n")
        where = f" (executed copy with the error: {out / (name + '.ipynb')})" if status == "failed" else ""
        print(f"=== {name} {'done' if status == 'ok' else 'FAILED'} in {seconds:.0f}s{where} ===", flush=True)

    last = [nb for nb in notebooks if nb.stem in LISTS_THE_STORE]
    notebooks = [nb for nb in notebooks if nb.stem not in LISTS_THE_STORE]
    alone = [nb for nb in notebooks if nb.stem in MEASURES_IN_KERNEL]
    together = [nb for nb in notebooks if nb.stem not in MEASURES_IN_KERNEL]
    if executor == "local" or _on_gpu_machine():
        # A GPU machine's notebooks run inference and Grad-CAM on its GPU: one at a time, as locally.
        together, alone = [], together + alone
    if together:
        _render_on_ray(together, out, parameters, kernel, address, note)
    for notebook in alone + last:
        print(f"=== {notebook.stem} ===", flush=True)
        note(*render_one(notebook, out, parameters, kernel))
    return statuses


def _on_gpu_machine() -> bool:
    import torch

    return torch.cuda.is_available()


def _render_on_ray(notebooks: List[Path], out: Path, parameters, kernel: str, address: Optional[str], note) -> None:
    ray = start_ray(address)
    # Rendering reads the store and draws: one core each, and on the driver's machine, where out/ is.
    node = ray.get_runtime_context().get_node_id()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=1, max_retries=1,
                      scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))(render_one)
    names = {}
    for nb in notebooks:
        names[task.remote(nb, out, parameters, kernel, out / f"{nb.stem}.log")] = nb.stem
    pending = list(names)
    print(f"rendering {len(pending)} notebooks on Ray, one per core; logs in {out}/<notebook>.log", flush=True)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        try:
            note(*ray.get(done[0]))
        except Exception as err:  # the worker died twice: report the notebook, render the rest
            print(f"render: {names[done[0]]}: {type(err).__name__}: {err}", file=sys.stderr)
            note(names[done[0]], 0.0, "failed")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m greenkd_utils.paper.render", description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--output-dir", required=True, type=Path)
    parser.add_argument("--timings", required=True, type=Path)
    parser.add_argument("--executor", default="local", choices=EXECUTORS)
    parser.add_argument("--address", default=None)
    parser.add_argument("--kernel", default="greenkd")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    args = parser.parse_args(argv)
    statuses = render([p.resolve() for p in args.notebooks], args.output_dir, [tuple(p) for p in args.parameter],
                      args.timings, args.executor, args.address, args.kernel)
    failed = [name for name, status in statuses.items() if status != "ok"]
    if failed:
        print(f"render: {len(failed)} notebook(s) FAILED: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

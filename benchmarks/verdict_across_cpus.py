"""One row group of ``benchmarks/verdict_across_cpus.sh``: Tables 1 and 4 of a profile trained in a fresh run
store under this process's CPU kernels (``ATEN_CPU_CAPABILITY``) and torch threads (``GREENKD_CPU_THREADS``),
then their stochastic-vs-tuned verdicts appended to a CSV.

    ATEN_CPU_CAPABILITY=avx2 GREENKD_CPU_THREADS=1 python benchmarks/verdict_across_cpus.py \\
        --store /tmp/store-avx2-1 --csv figures/demo/verdict_across_cpus.csv --executor ray
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import pandas as pd
import torch

from greenkd_utils.paper import experiments as ex
from greenkd_utils.paper import table1_carbon_footprint as table1
from greenkd_utils.paper import table4_kd_losses as table4
from greenkd_utils.runs.execution import cpu_capability, cpu_threads, hardware_label
from greenkd_utils.runs.executors import make_executor
from greenkd_utils.runs.plan import RunPlan

COLUMNS = ("cpu_capability", "threads", "loss", "n_seeds", "tuned_mean_pct", "stochastic_mean_pct",
           "difference_pct", "ci_low_pct", "ci_high_pct", "verdict")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--store", required=True, type=Path, help="a fresh run store for this capability and thread count")
    parser.add_argument("--csv", required=True, type=Path, help="rows are appended (the header written once)")
    parser.add_argument("--executor", default="local", choices=("local", "ray"))
    args = parser.parse_args(argv)

    capability, threads = cpu_capability(), cpu_threads()
    asked = os.environ.get("ATEN_CPU_CAPABILITY")
    if asked and asked.lower() != capability:
        raise SystemExit(f"ATEN_CPU_CAPABILITY={asked} was asked for but torch runs {capability} kernels")
    began = time.perf_counter()
    exp = ex.setup(args.profile, results_dir=args.store, device="cpu", progress=False)
    plan = RunPlan()
    table1.needed_runs(exp, plan)
    table4.verdict_runs(exp, plan)
    print(f"[{capability}, {threads} thread(s)] {len(plan)} runs of Tables 1 and 4 into {args.store}", flush=True)
    make_executor(args.executor).run(plan, exp.store, exp.device, progress=False).raise_if_failed()

    verdicts = ex.verdict_table(exp)
    # The runs must have used what this row says (a Ray worker inherits the environment, but check it).
    labels = set(verdicts["hardware"])
    expected = hardware_label({"cpu_capability": capability, "torch_threads": threads})
    if labels != {expected}:
        raise SystemExit(f"runs were trained on {sorted(labels)}, not {expected}")
    rows = verdicts.assign(cpu_capability=capability, threads=threads)[list(COLUMNS)]
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    rows.to_csv(args.csv, mode="a", header=not args.csv.exists(), index=False)
    print(rows.to_string(index=False))
    print(f"[{capability}, {threads} thread(s)] {time.perf_counter() - began:.0f} s (torch {torch.__version__})")


if __name__ == "__main__":
    pd.set_option("display.width", 200)
    main()

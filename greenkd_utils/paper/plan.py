"""``python -m greenkd_utils.paper.plan``: the runs the notebooks need, their bill, and (``--execute``) training
them with an executor before the notebooks render. ``run_all.sh`` calls it; ``run_all.sh --plan`` only bills.

    python -m greenkd_utils.paper.plan --profile demo --bill              # list, mark cached, project the rest
    python -m greenkd_utils.paper.plan --profile demo --execute --executor ray [--address ADDR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import pandas as pd

from greenkd_utils.paper.needed_runs import notebook_names, plan_notebooks
from greenkd_utils.runs.executors import EXECUTORS, make_executor
from greenkd_utils.runs.projection import CALIBRATION_EPOCHS, PLAN_FILE, Bill, project
from greenkd_utils.runs.store import atomic_write_json
from greenkd_utils.settings.profiles import load_profile


def list_runs(plan, cached) -> pd.DataFrame:
    rows = [{"run": run.name, "task": run.task, "epochs": int(run.config.train.epochs),
             "cached": "yes" if cached[run.key] else "no", "needed_by": ", ".join(run.needed_by)}
            for run in plan.order()]
    return pd.DataFrame(rows)


def describe_bill(bill: Bill) -> str:
    t = bill.totals
    energy = "; ".join(bill.energy_sources()) or "nothing to project"
    per_notebook = pd.DataFrame(bill.by_notebook())
    lines = [
        f"PROJECTED bill of the {t['runs_to_train']} run(s) still to train ({bill.n_cached} of {bill.n_runs} "
        f"already in the store), on {bill.device}:",
        f"  training FLOPs  {t['training_flops']:.3g} ({t['training_gflops_millions']:.3g} GFLOPs (M))",
        f"  device-hours    {t['device_hours']:.3g}",
        f"  energy          {t['energy_kwh']:.3g} kWh ({t['energy_kwh_pue']:.3g} kWh with PUE {bill.pue:g})",
        f"  CO2eq           {t['co2_g']:.3g} g (at {bill.carbon_intensity_g_per_kwh:g} g/kWh)",
        f"  how             from a {CALIBRATION_EPOCHS}-epoch calibration run of each run's shape on this device, epoch by "
        f"epoch (the first, then every later one as the second); {energy}",
        f"  calibration     {bill.calibration_wall_time_s:.1f} s, {bill.calibration_energy_kwh:.3g} kWh (this call's share)",
    ]
    if not per_notebook.empty:
        lines.append("  per notebook (a run several notebooks need appears under each):")
        lines += ["    " + line for line in per_notebook.to_string(index=False, float_format="%.3g").splitlines()]
    for note in bill.adaptive:
        lines.append(f"  not projected: {note}")
    searches: dict = {}
    for search in bill.searches:  # one per seed, alike but for their seed: one line per notebook
        searches.setdefault(search.notebook, []).append(search)
    for notebook, alike in searches.items():
        search = alike[0]
        lines.append(
            f"  projected apart, per seed ({len(alike)} seed(s)): {notebook}'s successive halving over "
            f"{search.n_taus} taus: {search.expected_epochs:.0f} of the grid's "
            f"{search.n_taus * search.epochs} epochs expected (5-95% over random rankings of the taus: "
            f"{search.epochs_low:.0f}-{search.epochs_high:.0f}), {search.flops_ratio_to_grid:.2f}x the full grid's "
            f"training FLOPs, {search.energy_kwh:.3g} kWh against the grid's {search.grid_energy_kwh:.3g}")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m greenkd_utils.paper.plan", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--results-dir", default=None)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--only", action="append", default=None, metavar="NOTEBOOK",
                        help=f"a notebook (repeatable); default: all of {', '.join(notebook_names())}")
    parser.add_argument("--list", action="store_true", help="print every run, cached or not")
    parser.add_argument("--bill", action="store_true", help="project the cost of the runs still to train")
    parser.add_argument("--output-dir", default=None, help=f"write the bill there as {PLAN_FILE}")
    parser.add_argument("--execute", action="store_true", help="train the missing runs")
    parser.add_argument("--executor", default="local", choices=EXECUTORS)
    parser.add_argument("--address", default=None, help="an existing Ray cluster (with --executor ray)")
    args = parser.parse_args(argv)

    progress = os.environ.get("GREENKD_PROGRESS") != "0"
    data_root = args.data_root or os.environ.get("GREENKD_DATA_ROOT")
    data_root = os.path.abspath(data_root) if data_root else None
    store, plan = plan_notebooks(args.only, args.profile, args.results_dir, data_root, args.device)
    profile = load_profile(args.profile, device=args.device)
    cached = plan.cached(store)
    print(f"run plan ({args.profile}): {len(plan)} runs, {sum(cached.values())} in the store {store.root}, "
          f"{len(plan) - sum(cached.values())} to train")
    if args.list:
        print(list_runs(plan, cached).to_string(index=False))
    executor = make_executor(args.executor, address=args.address)
    seconds = None
    if args.bill:
        bill = project(plan, store, args.profile, profile.pue, profile.carbon_intensity_g_per_kwh,
                       device=profile.device, data_root=data_root, executor=executor, progress=progress)
        print(describe_bill(bill))
        if args.output_dir:
            path = Path(args.output_dir) / PLAN_FILE
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(path, bill.to_dict())
            print(f"bill written to {path}")
        seconds = {run.key: run.wall_time_s for run in bill.runs}
    if args.execute:
        summary = executor.run(plan, store, device=profile.device, data_root=data_root, progress=progress,
                               seconds=seconds)
        print(summary.describe())
        if summary.failed:
            print(json.dumps(summary.failed, indent=1), file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The manifest run_all.sh writes beside the figures: what ran, where, with what, how long, at what energy.

    python -m greenkd_utils.paper.manifest --profile demo --output-dir figures/demo --timings timings.tsv
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Optional

from greenkd_utils.runs.projection import PLAN_FILE, measured_beside_projected
from greenkd_utils.runs.store import RunStore, atomic_write_json
from greenkd_utils.runs.execution import cpu_threads, describe_hardware, library_versions


def git_commit(repo: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", ".", ":!figures"], cwd=repo, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def hardware() -> Dict[str, Any]:
    import psutil
    import torch

    cuda = torch.cuda.is_available()
    info = describe_hardware(torch.device("cuda" if cuda else "cpu"))
    info.update({
        # A CPU run's threads (the record of each run says what it used): $GREENKD_CPU_THREADS, else 1.
        "torch_threads": cpu_threads(),
        "cpu_count": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "cuda_available": cuda,
    })
    return info


def read_timings(path: Path) -> List[Dict[str, Any]]:
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            name, seconds, status = line.split("\t")
            rows.append({"notebook": name, "duration_s": float(seconds), "status": status})
    return rows


def projected_and_measured(output_dir: Path, results_dir: Optional[Path]) -> Optional[Dict[str, Any]]:
    """The bill written before training (plan.json) beside what the same runs measured."""
    plan_file = output_dir / PLAN_FILE
    if results_dir is None or not plan_file.is_file():
        return None
    projection = json.loads(plan_file.read_text())
    compared = measured_beside_projected(projection, RunStore(results_dir))
    return {
        "projected": {k: projection.get(k) for k in ("label", "how", "device", "energy_sources", "totals",
                                                      "adaptive_not_projected", "searches", "calibration")},
        "measured": None if compared is None else {
            "runs_compared": compared["runs_compared"],
            "runs_not_in_store": compared["runs_not_in_store"],
            "totals": compared["totals"],
            # Per kind of run (classification, data_free_kd, detection, qat): projected / measured energy,
            # device time and training FLOPs.
            "by_kind": compared["by_kind"],
        },
    }


def build_manifest(profile: str, output_dir: Path, timings: Path, repo: Path,
                   results_dir: Optional[Path] = None) -> Dict[str, Any]:
    summaries = {}
    for path in sorted(output_dir.glob("*.summary.json")):
        summaries[path.name.removesuffix(".summary.json")] = json.loads(path.read_text())
    notebooks = read_timings(timings)
    # Table 1 repeats Table 4's HKD verdict: one entry per (dataset, loss).
    verdicts = {(v["dataset"], v["loss"]): v for s in summaries.values() for v in s.get("verdicts", [])}
    return {
        "profile": profile,
        "commit": git_commit(repo),
        "written_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "hardware": hardware(),
        "versions": library_versions(),
        "notebooks": notebooks,
        "total_duration_s": sum(n["duration_s"] for n in notebooks),
        "verdicts_stochastic_vs_tuned": list(verdicts.values()),
        "energy": summaries,
        "energy_note": "per-notebook energy totals of the runs each table shows; 'estimated' where no sensor was readable",
        "bill_projected_and_measured": projected_and_measured(output_dir, results_dir),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", required=True)
    parser.add_argument("--output-dir", required=True, type=Path)
    parser.add_argument("--timings", required=True, type=Path)
    parser.add_argument("--results-dir", type=Path, default=None, help="the run store, to measure the planned runs")
    args = parser.parse_args(argv)
    repo = Path(__file__).resolve().parents[2]
    manifest = build_manifest(args.profile, args.output_dir, args.timings, repo, args.results_dir)
    atomic_write_json(args.output_dir / "manifest.json", manifest)
    print(f"manifest: {args.output_dir / 'manifest.json'} ({manifest['total_duration_s']:.0f} s of training and notebooks)")


if __name__ == "__main__":
    main()

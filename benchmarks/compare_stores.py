"""How far two run stores' records of the same runs differ (e.g. the same plan under two executors).

    python benchmarks/compare_stores.py STORE_A STORE_B

Prints how many runs both hold, how many are identical in every number that depends on training (test and
validation accuracy, every history value but times and energy), and the largest differences.
"""

from __future__ import annotations

import math
import sys

from greenkd_utils.runs.store import RunStore

# What may differ between two trainings of the same config: when, where and how long it took.
NOT_NUMERICS = {"energy_kwh", "energy_source", "wall_time_s"}


def numbers(record):
    out = {"test_accuracy": record["test_accuracy"], "val_accuracy": record["val_accuracy"],
           "training_flops": record["flops"]["training_flops"]}
    for row in record["history"]:
        for k, v in row.items():
            if k not in NOT_NUMERICS and isinstance(v, (int, float)):
                out[f"history[{row['epoch']}].{k}"] = v
    return out


def main(a: str, b: str) -> None:
    left = {r["key"]: r for r in RunStore(a).finished_records()}
    right = {r["key"]: r for r in RunStore(b).finished_records()}
    common = sorted(set(left) & set(right))
    identical, worst = 0, []
    for key in common:
        x, y = numbers(left[key]), numbers(right[key])
        diffs = {k: abs(x[k] - y.get(k, math.nan)) for k in x}
        if all(d == 0 for d in diffs.values()) and x.keys() == y.keys():
            identical += 1
        else:
            field = max(diffs, key=lambda k: diffs[k] if not math.isnan(diffs[k]) else math.inf)
            worst.append((diffs[field], left[key]["name"], field))
    print(f"runs in both stores: {len(common)} (only in A: {len(set(left) - set(right))}, "
          f"only in B: {len(set(right) - set(left))})")
    print(f"identical in every training number: {identical} of {len(common)}")
    acc = [abs(left[k]["test_accuracy"] - right[k]["test_accuracy"]) for k in common]
    if acc:
        print(f"largest test-accuracy difference: {max(acc):.4g} points")
    for diff, name, field in sorted(worst, reverse=True)[:10]:
        print(f"  {name}: {field} differs by {diff:.4g}")


if __name__ == "__main__":
    main(*sys.argv[1:3])

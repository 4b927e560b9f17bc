#!/usr/bin/env bash
# Does the demo's stochastic-vs-tuned verdict depend on the CPU? Trains Tables 1 and 4 of the demo in a fresh
# run store under each CPU instruction set torch can use here (ATEN_CPU_CAPABILITY = default, avx2 and, where
# the CPU has it, avx512), each with 1 and with 2 torch threads, and writes every verdict to
# figures/demo/verdict_across_cpus.csv. For every loss the verdict must be the same in every row.
#
#   benchmarks/verdict_across_cpus.sh [--profile demo] [--csv PATH] [--keep-stores DIR]
#
# 1 thread: two runs at a time on Ray (one core each); 2 threads: one run at a time (the local executor).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
profile=demo; csv=""; stores=""
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="${2:?}"; shift 2 ;;
    --csv) csv="${2:?}"; shift 2 ;;
    --keep-stores) stores="${2:?}"; shift 2 ;;
    -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "verdict_across_cpus.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
source "$REPO/scripts/setup_env.sh"
csv="${csv:-$REPO/figures/$profile/verdict_across_cpus.csv}"
[ -n "$stores" ] || { stores="$(mktemp -d)"; trap 'rm -rf "$stores"' EXIT; }
capabilities="default"
grep -qw avx2 /proc/cpuinfo && capabilities="$capabilities avx2"
grep -qw avx512f /proc/cpuinfo && capabilities="$capabilities avx512"
rm -f "$csv"
export GREENKD_PROGRESS=0 OMP_NUM_THREADS=1
started=$(date +%s)
for capability in $capabilities; do
  for threads in 1 2; do
    executor=ray; [ "$threads" = 1 ] || executor=local
    one=$(date +%s)
    ATEN_CPU_CAPABILITY="$capability" GREENKD_CPU_THREADS="$threads" OMP_NUM_THREADS="$threads" \
      python "$REPO/benchmarks/verdict_across_cpus.py" --profile "$profile" --csv "$csv" --executor "$executor" \
      --store "$stores/$profile-$capability-$threads"
    echo "verdict_across_cpus: $capability, $threads thread(s): $(( $(date +%s) - one )) s"
  done
done
echo "verdict_across_cpus: all in $(( $(date +%s) - started )) s on $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); $csv"
# The check: one verdict per loss across every row.
python - "$csv" <<'PY'
import sys
import pandas as pd
rows = pd.read_csv(sys.argv[1])
split = {loss: sorted(set(g["verdict"])) for loss, g in rows.groupby("loss") if g["verdict"].nunique() > 1}
for loss, group in rows.groupby("loss"):
    print(f"{loss}: verdicts {sorted(set(group['verdict']))}, difference {group['difference_pct'].min():+.2f} to "
          f"{group['difference_pct'].max():+.2f} points over {len(group)} capability/thread settings")
if split:
    sys.exit(f"the verdict depends on the CPU: {split}")
PY

#!/usr/bin/env bash
# run_all.sh with the local executor, then with Ray, each from an empty run store, on this machine; prints
# the wall time of each, the speed-up, and how far the two stores' records differ.
#
#   bash benchmarks/executors.sh [PROFILE] [WORK_DIR]     # default: demo, a fresh temporary folder
#
# Run it on an otherwise idle machine: both runs share its cores with anything else running.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
profile="${1:-demo}"
work="${2:-$(mktemp -d)}"
mkdir -p "$work"
declare -A seconds
for executor in local ray; do
  rm -rf "$work/$executor"
  start=$(date +%s)
  "$REPO/run_all.sh" --profile "$profile" --executor "$executor" \
    --results-dir "$work/$executor/results" --output-dir "$work/$executor/figures" > "$work/$executor.log" 2>&1
  seconds[$executor]=$(( $(date +%s) - start ))
  echo "$executor: ${seconds[$executor]} s (log: $work/$executor.log)"
done
python3 -c "print(f'speed-up of ray over local: {${seconds[local]} / ${seconds[ray]}:.2f}x')"
source "$REPO/.venv/bin/activate"
python "$REPO/benchmarks/compare_stores.py" "$work/local/results" "$work/ray/results"

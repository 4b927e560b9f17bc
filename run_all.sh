#!/usr/bin/env bash
# Regenerate every table and figure: executes each notebook in notebooks/ with papermill.
#
#   ./run_all.sh                                   # profile demo: digits on a CPU
#   ./run_all.sh --profile smoke                   # seconds per notebook
#   ./run_all.sh --profile paper --data-root DIR   # the paper's scale (GPU; CIFAR/Tiny ImageNet under DIR)
#   ./run_all.sh --only table1_carbon_footprint    # one notebook
#
# Outputs: figures/<profile>/ (tables as CSV and Markdown, figures as PNG and PDF, the executed
# notebooks, manifest.json). Runs are cached in results/<profile>/: a second call costs seconds.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PROFILES="smoke demo paper"

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; }
profile=demo; data_root=""; results_dir=""; device=""; only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="${2:?--profile needs a value}"; shift 2 ;;
    --data-root) data_root="${2:?--data-root needs a folder}"; shift 2 ;;
    --results-dir) results_dir="${2:?--results-dir needs a folder}"; shift 2 ;;
    --device) device="${2:?--device needs cpu, cuda or auto}"; shift 2 ;;
    --only) only="${2:?--only needs a notebook name}"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run_all.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
case " $PROFILES " in
  *" $profile "*) ;;
  *) echo "run_all.sh: unknown profile '$profile'; valid: $PROFILES" >&2; exit 2 ;;
esac
if [ "$profile" = paper ] && [ -z "$data_root" ] && [ -z "${GREENKD_DATA_ROOT:-}" ]; then
  echo "run_all.sh: the paper profile reads CIFAR-10/100, Tiny ImageNet and VOCdevkit/ from a local folder: pass --data-root DIR" >&2
  exit 2
fi

source "$REPO/scripts/setup_env.sh"
# The CPU profiles' small models are overhead-bound: one thread per process is faster on a small machine
# and never thrashes when something else runs (docs/protocol.md, "CPU threads").
if [ "$profile" != paper ]; then export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"; fi

out="$REPO/figures/$profile"
results_dir="${results_dir:-$REPO/results/$profile}"
mkdir -p "$out" "$results_dir"
timings="$out/.timings.tsv"
: > "$timings"

params=(-p profile "$profile" -p results_dir "$results_dir" -p output_dir "$out")
[ -n "$data_root" ] && params+=(-p data_root "$data_root")
[ -n "$device" ] && params+=(-p device "$device")

shopt -s nullglob
notebooks=("$REPO"/notebooks/*.ipynb)
[ -n "$only" ] && notebooks=("$REPO/notebooks/${only%.ipynb}.ipynb")
total_start=$(date +%s)
for nb in "${notebooks[@]}"; do
  [ -f "$nb" ] || { echo "run_all.sh: no notebook $nb" >&2; exit 2; }
  name="$(basename "$nb" .ipynb)"
  echo "=== $name (profile $profile) ==="
  start=$(date +%s)
  if ! (cd "$REPO/notebooks" && papermill "$nb" "$out/$name.ipynb" -k greenkd --log-output --progress-bar "${params[@]}"); then
    printf '%s\t%s\tfailed\n' "$name" "$(( $(date +%s) - start ))" >> "$timings"
    python -m greenkd_utils.paper.manifest --profile "$profile" --output-dir "$out" --timings "$timings" || true
    echo "run_all.sh: notebook $name FAILED (executed copy with the error: $out/$name.ipynb)" >&2
    exit 1
  fi
  seconds=$(( $(date +%s) - start ))
  printf '%s\t%s\tok\n' "$name" "$seconds" >> "$timings"
  echo "=== $name done in ${seconds}s ==="
done
python -m greenkd_utils.paper.manifest --profile "$profile" --output-dir "$out" --timings "$timings"
echo "all ${#notebooks[@]} notebooks done in $(( $(date +%s) - total_start ))s; outputs in $out"

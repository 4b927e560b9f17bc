#!/usr/bin/env bash
# Regenerate every table and figure: executes each notebook in notebooks/ with papermill.
#
#   ./run_all.sh                                   # profile demo: digits on a CPU, the runs in parallel on Ray
#   ./run_all.sh --profile smoke                   # seconds per notebook
#   ./run_all.sh --profile paper --data-root DIR   # the paper's scale (GPU; CIFAR/Tiny ImageNet under DIR)
#   ./run_all.sh --only table1_carbon_footprint    # one notebook
#   ./run_all.sh --executor ray                    # the runs in parallel on a local Ray runtime (every core, every GPU;
#                                                  # the demo's default, 1.76x faster on 2 cores); --executor local: one by one
#   ./run_all.sh --executor ray --address ADDR     # ... on an existing Ray cluster
#   ./run_all.sh --plan [--profile P]              # the bill only: runs needed, which are cached, projected cost
#   (also --results-dir DIR: the run store; --output-dir DIR: the outputs; --device cpu|cuda|auto)
#
# First the runs every notebook needs are collected (teachers before their students), billed (projected
# FLOPs, device-hours, kWh, CO2 from a one-epoch calibration per run shape) and trained by the executor;
# then each notebook renders its tables from the store. Outputs: figures/<profile>/ (tables as CSV and
# Markdown, figures as PNG and PDF, the executed notebooks, plan.json, manifest.json with projected and
# measured side by side). Runs are cached in results/<profile>/: a second call costs seconds.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PROFILES="smoke demo paper"

usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; }
profile=demo; data_root=""; results_dir=""; output_dir=""; device=""; only=""; executor=""; address=""; plan_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="${2:?--profile needs a value}"; shift 2 ;;
    --data-root) data_root="${2:?--data-root needs a folder}"; shift 2 ;;
    --results-dir) results_dir="${2:?--results-dir needs a folder}"; shift 2 ;;
    --output-dir) output_dir="${2:?--output-dir needs a folder}"; shift 2 ;;
    --device) device="${2:?--device needs cpu, cuda or auto}"; shift 2 ;;
    --only) only="${2:?--only needs a notebook name}"; shift 2 ;;
    --executor) executor="${2:?--executor needs local or ray}"; shift 2 ;;
    --address) address="${2:?--address needs a Ray cluster address}"; shift 2 ;;
    --plan) plan_only=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run_all.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
case " $PROFILES " in
  *" $profile "*) ;;
  *) echo "run_all.sh: unknown profile '$profile'; valid: $PROFILES" >&2; exit 2 ;;
esac
# Ray pays on the demo (docs/benchmarks.md); smoke is seconds, and the paper profile on one GPU gains nothing.
[ -z "$executor" ] && { [ "$profile" = demo ] && executor=ray || executor=local; }
case "$executor" in
  local|ray) ;;
  *) echo "run_all.sh: unknown executor '$executor'; valid: local ray" >&2; exit 2 ;;
esac
if [ -n "$address" ] && [ "$executor" != ray ]; then
  echo "run_all.sh: --address is a Ray cluster's; add --executor ray" >&2; exit 2
fi
if [ "$profile" = paper ] && [ -z "$data_root" ] && [ -z "${GREENKD_DATA_ROOT:-}" ]; then
  echo "run_all.sh: the paper profile reads CIFAR-10/100, Tiny ImageNet and VOCdevkit/ from a local folder: pass --data-root DIR" >&2
  exit 2
fi

# Folders as absolute paths: the notebooks run in notebooks/, Ray workers wherever Ray puts them.
absolute() { case "$1" in /*) printf '%s' "$1" ;; *) printf '%s' "$PWD/$1" ;; esac; }
[ -n "$data_root" ] && data_root="$(absolute "$data_root")"
[ -n "$results_dir" ] && results_dir="$(absolute "$results_dir")"
[ -n "$output_dir" ] && output_dir="$(absolute "$output_dir")"

source "$REPO/scripts/setup_env.sh"
# The CPU profiles' small models are overhead-bound: one thread per process is faster on a small machine
# and never thrashes when something else runs (docs/protocol.md, "CPU threads").
if [ "$profile" != paper ]; then export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"; fi

out="${output_dir:-$REPO/figures/$profile}"
results_dir="${results_dir:-$REPO/results/$profile}"
mkdir -p "$out" "$results_dir"
timings="$out/.timings.tsv"

params=(-p profile "$profile" -p results_dir "$results_dir" -p output_dir "$out" -p executor "$executor")
[ -n "$data_root" ] && params+=(-p data_root "$data_root")
[ -n "$device" ] && params+=(-p device "$device")
[ -n "$address" ] && params+=(-p ray_address "$address")

shopt -s nullglob
notebooks=("$REPO"/notebooks/*.ipynb)
[ -n "$only" ] && notebooks=("$REPO/notebooks/${only%.ipynb}.ipynb")
for nb in "${notebooks[@]}"; do
  [ -f "$nb" ] || { echo "run_all.sh: no notebook $nb" >&2; exit 2; }
done

# The runs every notebook needs, their bill, then (unless --plan) training them with the executor.
plan_args=(--profile "$profile" --results-dir "$results_dir" --output-dir "$out" --bill)
[ -n "$data_root" ] && plan_args+=(--data-root "$data_root")
[ -n "$device" ] && plan_args+=(--device "$device")
[ -n "$only" ] && plan_args+=(--only "${only%.ipynb}")
# The calibration runs on the executor too (on a cluster: on its workers' devices).
plan_args+=(--executor "$executor")
[ -n "$address" ] && plan_args+=(--address "$address")
if [ "$plan_only" = 1 ]; then
  python -m greenkd_utils.paper.plan "${plan_args[@]}" --list
  exit $?
fi
: > "$timings"
total_start=$(date +%s)
start=$(date +%s)
plan_args+=(--execute)
if ! python -m greenkd_utils.paper.plan "${plan_args[@]}"; then
  echo "run_all.sh: training the planned runs FAILED" >&2
  exit 1
fi
printf '%s\t%s\tok\n' "runs ($executor executor)" "$(( $(date +%s) - start ))" >> "$timings"
# Then every notebook renders its tables and figures from the store (with Ray, one notebook per core).
status=0
python -m greenkd_utils.paper.render "${notebooks[@]}" --output-dir "$out" --timings "$timings" \
  --executor "$executor" ${address:+--address "$address"} "${params[@]}" || status=$?
python -m greenkd_utils.paper.manifest --profile "$profile" --output-dir "$out" --timings "$timings" --results-dir "$results_dir"
if [ "$status" != 0 ]; then
  echo "run_all.sh: a notebook FAILED (see above; its executed copy in $out holds the error)" >&2
  exit 1
fi
echo "all ${#notebooks[@]} notebooks done in $(( $(date +%s) - total_start ))s; outputs in $out"

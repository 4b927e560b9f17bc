#!/usr/bin/env bash
# The GPU check: the CUDA-only tests, the KD-epoch benchmark (with and without torch.compile) and a short
# paper-profile KD run with NVML energy, all within 8 minutes on one H100/H200, without network.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]     # OUT_DIR: the argument, else $OUT, else benchmarks/gpu_check_out
#
# Writes OUT_DIR/gpu_check.md (tables for docs/benchmarks.md) and OUT_DIR/gpu_check.json (raw figures), each
# step's figures under OUT_DIR/steps/ and its log under OUT_DIR/logs/. Every step runs under its own time limit,
# cut to what is left of the whole budget; a step that fails or times out is recorded and the next one runs.
#
# Exit status: 0 every step passed; 1 a step failed, timed out or was skipped for lack of time;
# 2 no CUDA GPU (nothing was measured); 3 no Python that can import torch, or the CUDA check itself broke.
#
# Environment: PYTHON (the interpreter to use; default: the repository's .venv, else python/python3 on PATH),
# GPU_CHECK_BUDGET_S (the whole check, default 460 s), GPU_CHECK_KD_EPOCH_IMAGES (images per benchmark epoch,
# default the full 50,000).
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT_DIR="${1:-${OUT:-$REPO/benchmarks/gpu_check_out}}"
BUDGET_S="${GPU_CHECK_BUDGET_S:-460}"
REPORT_RESERVE_S=30   # kept back for the report, whatever the steps before it do
KILL_GRACE_S=10       # a step that ignores SIGTERM is killed this much later
MIN_STEP_S=20         # a step that would get less than this is skipped rather than started
START=$SECONDS

mkdir -p "$OUT_DIR" && OUT_DIR="$(cd "$OUT_DIR" && pwd)" || { echo "gpu_check: cannot create $OUT_DIR" >&2; exit 3; }
STEPS="$OUT_DIR/steps"
LOGS="$OUT_DIR/logs"
# A previous check's figures must not leak into this report.
rm -rf "$STEPS" "$LOGS"
rm -f "$OUT_DIR/gpu_check.md" "$OUT_DIR/gpu_check.json"
mkdir -p "$STEPS" "$LOGS"

cd "$REPO"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 GREENKD_PROGRESS=0
# The GPU does the arithmetic: a few host threads are enough, and the other cores are left to the
# benchmark's DataLoader workers and to torch.compile's compiler processes.
CORES="$(nproc 2>/dev/null || echo 2)"
THREADS=$(( CORES / 2 ))
(( THREADS < 1 )) && THREADS=1
(( THREADS > 8 )) && THREADS=8
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$THREADS}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-$THREADS}"

record() {  # name, exit code or "skipped", seconds, time limit
    printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$STEPS/status.tsv"
}

run_step() {  # name, cap in seconds, command...
    local name="$1" cap="$2"
    shift 2
    local left=$(( BUDGET_S - (SECONDS - START) - REPORT_RESERVE_S - KILL_GRACE_S ))
    local limit=$(( cap < left ? cap : left ))
    if (( limit < MIN_STEP_S )); then
        echo "== $name: skipped, only ${left}s left of the ${BUDGET_S}s budget"
        record "$name" skipped 0 0
        return
    fi
    echo "== $name (time limit ${limit}s): $*"
    local began=$SECONDS
    timeout --kill-after="$KILL_GRACE_S" "$limit" "$@" 2>&1 | tee "$LOGS/$name.log"
    local rc=${PIPESTATUS[0]}
    record "$name" "$rc" "$(( SECONDS - began ))" "$limit"
    echo "== $name: exit status $rc after $(( SECONDS - began ))s"
}

# -- 1. Is there a CUDA GPU? The first interpreter that can import torch answers.
candidates=()
[[ -n "${PYTHON:-}" ]] && candidates+=("$PYTHON")
[[ -x "$REPO/.venv/bin/python" ]] && candidates+=("$REPO/.venv/bin/python")
for name in python python3; do
    command -v "$name" >/dev/null 2>&1 && candidates+=("$(command -v "$name")")
done
NO_CUDA_RC=2
NO_TORCH_RC=3
PY=""
device_rc=$NO_TORCH_RC
# ${array[@]+...}: an empty array is an unbound variable to older bash under set -u.
for candidate in ${candidates[@]+"${candidates[@]}"}; do
    began=$SECONDS
    timeout --kill-after="$KILL_GRACE_S" 90 "$candidate" benchmarks/gpu_check.py device --out "$OUT_DIR" 2>&1 \
        | tee "$LOGS/device.log"
    device_rc=${PIPESTATUS[0]}
    if (( device_rc != NO_TORCH_RC )); then
        PY="$candidate"
        record device "$device_rc" "$(( SECONDS - began ))" 90
        break
    fi
done
if [[ -z "$PY" ]]; then
    echo "gpu_check: no Python that can import torch (tried: ${candidates[*]+"${candidates[*]}"}); nothing was measured." >&2
    exit 3
fi
if (( device_rc == NO_CUDA_RC )); then
    echo "gpu_check: no CUDA GPU found, so nothing was measured (exit status 2)."
    exit 2
fi
if (( device_rc != 0 )); then
    echo "gpu_check: the CUDA check itself failed (exit status $device_rc, log: $LOGS/device.log); nothing was measured." >&2
    exit 3
fi
echo "gpu_check: python $PY, budget ${BUDGET_S}s, OMP_NUM_THREADS=$OMP_NUM_THREADS, output $OUT_DIR"

# -- 2.-4. The steps, cheapest and most informative first; the compiled benchmark gets whatever time is left.
kd_images=()
[[ -n "${GPU_CHECK_KD_EPOCH_IMAGES:-}" ]] && kd_images=(--images "$GPU_CHECK_KD_EPOCH_IMAGES")

# Only the modules that mark tests gpu are collected: importing the rest costs time, and a module whose
# test-only dependency is missing on the GPU machine must not stop the CUDA tests from running.
mapfile -t gpu_test_files < <(grep -l 'mark\.gpu' tests/test_*.py)
run_step pytest_gpu 150 "$PY" -m pytest -m gpu -q -rfEs -p no:cacheprovider --continue-on-collection-errors \
    --junitxml="$STEPS/pytest_gpu.xml" ${gpu_test_files[@]+"${gpu_test_files[@]}"}
run_step kd_epoch 120 "$PY" benchmarks/kd_epoch.py --shapes cifar --batch-sizes 128 512 ${kd_images[@]+"${kd_images[@]}"} \
    --json "$STEPS/kd_epoch.json"
run_step paper_run 120 "$PY" benchmarks/gpu_check.py paper-run --out "$OUT_DIR"
run_step kd_epoch_compile 240 "$PY" benchmarks/kd_epoch.py --shapes cifar --batch-sizes 128 512 ${kd_images[@]+"${kd_images[@]}"} \
    --compile --skip-conventional --json "$STEPS/kd_epoch_compile.json"

# -- 5. The report: gpu_check.md and gpu_check.json; its exit status says whether every step passed.
timeout --kill-after=5 "$(( REPORT_RESERVE_S - 5 ))" "$PY" benchmarks/gpu_check.py report --out "$OUT_DIR" \
    --budget-s "$BUDGET_S"
report_rc=$?
echo "gpu_check: finished in $(( SECONDS - START ))s"
(( report_rc == 0 )) && exit 0
exit 1

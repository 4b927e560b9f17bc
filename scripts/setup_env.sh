#!/usr/bin/env bash
# Create .venv with the project installed (editable) and its Jupyter kernel, unless that is already done.
# Sourced by run_all.sh and run_tests.sh; safe to run again (it only installs what is missing).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${GREENKD_VENV:-$REPO/.venv}"
PY="${PYTHON:-python3}"
stamp="$VENV/.greenkd-installed"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PY" -m venv "$VENV"
fi
if [ ! -f "$stamp" ] || [ "$REPO/pyproject.toml" -nt "$stamp" ]; then
  echo "[setup] installing greenkd and its dependencies into $VENV (first time: several minutes, PyTorch is large)"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -e "$REPO[test]"
  "$VENV/bin/python" -m ipykernel install --sys-prefix --name greenkd --display-name "Python (greenkd)" >/dev/null
  touch "$stamp"
fi
export PATH="$VENV/bin:$PATH"

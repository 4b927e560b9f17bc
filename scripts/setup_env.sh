#!/usr/bin/env bash
# Create .venv with the exact versions pinned in requirements.lock, the project (editable) and its
# Jupyter kernel, unless that is already done. Sourced by run_all.sh and run_tests.sh; safe to run again.
#
#   GREENKD_INSTALL=loose   install from pyproject.toml's lower bounds instead (the newest versions the
#                           package index serves; for a machine that brings its own torch, or to try
#                           newer releases). scripts/refresh_lock.sh turns such an install into a new lock.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${GREENKD_VENV:-$REPO/.venv}"
PY="${PYTHON:-python3}"
mode="${GREENKD_INSTALL:-locked}"
case "$mode" in
  locked|loose) ;;
  *) echo "[setup] GREENKD_INSTALL must be 'locked' or 'loose'; got '$mode'" >&2; return 2 2>/dev/null || exit 2 ;;
esac
stamp="$VENV/.greenkd-installed"
# What was installed is recorded by content, so an edited lock or pyproject triggers a new install.
want="$mode $(cat "$REPO/requirements.lock" "$REPO/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PY" -m venv "$VENV"
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing greenkd ($mode) into $VENV (first time: several minutes, PyTorch is large)"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  if [ "$mode" = locked ]; then
    "$VENV/bin/python" -m pip install --quiet -r "$REPO/requirements.lock"
    "$VENV/bin/python" -m pip install --quiet --no-deps -e "$REPO"
  else
    "$VENV/bin/python" -m pip install --quiet --upgrade -e "$REPO[test]"
  fi
  "$VENV/bin/python" -m ipykernel install --sys-prefix --name greenkd --display-name "Python (greenkd)" >/dev/null
  echo "$want" > "$stamp"
fi
export PATH="$VENV/bin:$PATH"
export GREENKD_INSTALL_MODE="$mode"

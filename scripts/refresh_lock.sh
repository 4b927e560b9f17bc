#!/usr/bin/env bash
# Regenerate requirements.lock from one fresh resolve of pyproject.toml (project + test extras):
# a throw-away virtualenv gets the newest versions the package index serves, and `pip freeze`
# writes every installed distribution with its exact version. Commit the new lock with the change
# that needed it; ./run_tests.sh then installs it everywhere.
#
#   scripts/refresh_lock.sh            # writes requirements.lock
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$PY" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install --quiet --upgrade pip
"$tmp/venv/bin/python" -m pip install --quiet -e "$REPO[test]"
{
  echo "# Exact versions of every package greenkd and its tests install, from one resolve of pyproject.toml"
  echo "# on $("$tmp/venv/bin/python" -c 'import platform; print(f"Python {platform.python_version()}, {platform.system()} {platform.machine()}")')."
  echo "# Installed by scripts/setup_env.sh (./run_all.sh, ./run_tests.sh); regenerate with scripts/refresh_lock.sh."
  "$tmp/venv/bin/python" -m pip freeze --exclude-editable | grep -v '^-e ' | LC_ALL=C sort -f
} > "$REPO/requirements.lock"
echo "wrote $REPO/requirements.lock ($(grep -vc '^#' "$REPO/requirements.lock") packages)"

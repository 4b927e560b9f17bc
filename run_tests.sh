#!/usr/bin/env bash
# Set up the environment if it is missing, then run the test-suite (CPU only; executes every notebook at the smoke profile).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$REPO/scripts/setup_env.sh"
cd "$REPO"
exec python -m pytest "$@"

#!/usr/bin/env bash
# Install the headless browser the JupyterLab browser test drives (tests/test_browser.py): Debian's
# `chromium` and `chromium-driver`, when either is missing. The test's Python driver (Selenium, pinned in
# requirements.lock) is pointed at these binaries, so nothing downloads a browser build of its own.
#
#   scripts/install_browser.sh          # installs what is missing (needs root or passwordless sudo)
#   scripts/install_browser.sh --check  # exits 0 when both are installed, 1 otherwise; installs nothing
#
# Prints the paths of the browser and its driver on success.
set -euo pipefail

find_browser() { command -v chromium || command -v chromium-browser || true; }
find_driver() { command -v chromedriver || command -v chromium-driver || true; }

if [ -n "$(find_browser)" ] && [ -n "$(find_driver)" ]; then
  echo "browser: $(find_browser)"; echo "driver: $(find_driver)"; exit 0
fi
if [ "${1:-}" = --check ]; then
  echo "install_browser.sh: chromium or chromedriver is missing" >&2; exit 1
fi
if ! command -v apt-get >/dev/null; then
  echo "install_browser.sh: apt-get is not available here; install chromium and its chromedriver by hand" >&2
  exit 1
fi
if [ "$(id -u)" = 0 ]; then
  as_root=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  echo "install_browser.sh: installing Debian's chromium and chromium-driver needs root (or passwordless sudo)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# A fresh machine's package lists may be empty or stale, and then apt finds no chromium.
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
if [ -z "$(find_browser)" ] || [ -z "$(find_driver)" ]; then
  echo "install_browser.sh: apt-get finished but chromium or chromedriver is still not on PATH" >&2; exit 1
fi
echo "browser: $(find_browser)"; echo "driver: $(find_driver)"

"""Tests for greenkd_utils.energy.sensors: the real carbontracker adapters on a machine without its sensors,
and imports that stay offline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from greenkd_utils.energy import report, sensors


def test_real_carbontracker_adapters_report_unavailable_here():
    # The real factories on this machine (no RAPL, no NVIDIA driver) must say "no", not raise.
    assert sensors.open_carbontracker_cpu("/nonexistent") is None
    if not os.path.isdir("/sys/class/powercap"):
        assert sensors.open_carbontracker_cpu(report.POWERCAP_ROOT) is None
    gpu = sensors.open_carbontracker_gpu(0)  # None without an NVIDIA driver
    if gpu is not None:
        assert gpu.power_w() >= 0
        gpu.close()


def test_carbontracker_component_imports_stay_offline():
    # Importing the component modules must not pull in carbontracker's
    # network-facing parts (location lookup, intensity fetchers, requests).
    code = (
        "import sys, socket\n"
        "def no_net(*a, **k): raise AssertionError('network access at import')\n"
        "socket.socket.connect = no_net\n"
        "socket.create_connection = no_net\n"
        "import carbontracker.components.cpu.intel, carbontracker.components.gpu.nvidia\n"
        "import greenkd_utils.energy.meter\n"
        "bad = [m for m in sys.modules if m.startswith(('carbontracker.tracker', "
        "'carbontracker.emissions', 'carbontracker.constants', 'geocoder', 'requests'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])

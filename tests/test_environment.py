"""The pinned environment: one lock, used by the set-up and by conda, and what runs is what it pins."""

from __future__ import annotations

import os
import re
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from greenkd_utils.runs.execution import library_versions

REPO = Path(__file__).resolve().parent.parent
LOCK = REPO / "requirements.lock"


def locked_pins() -> dict:
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        requirement = Requirement(line)
        specifiers = list(requirement.specifier)
        assert len(specifiers) == 1 and specifiers[0].operator == "==", f"not an exact pin: {line!r}"
        pins[canonicalize_name(requirement.name)] = specifiers[0].version
    return pins


def project_requirements() -> list:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]]


def test_the_lock_pins_every_dependency_of_the_project_exactly():
    pins = locked_pins()
    for requirement in project_requirements():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is a dependency but requirements.lock does not pin it"
        # The lock comes from one resolve of pyproject's bounds, so every pin satisfies them.
        assert requirement.specifier.contains(pins[name], prereleases=True), (requirement, pins[name])


def test_setup_and_conda_install_from_the_same_lock():
    setup = (REPO / "scripts" / "setup_env.sh").read_text()
    assert re.search(r"pip install .*-r \"\$REPO/requirements.lock\"", setup)
    environment = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in environment["dependencies"] if isinstance(d, dict))
    assert "-r requirements.lock" in pip_section


@pytest.mark.skipif(
    os.environ.get("GREENKD_INSTALL_MODE") != "locked",
    reason="the environment was not installed from requirements.lock (GREENKD_INSTALL=loose or a hand-made venv)",
)
def test_installed_versions_and_run_records_match_the_lock():
    pins = locked_pins()
    for name, version in pins.items():
        assert Version(metadata.version(name)) == Version(version), f"{name}: installed {metadata.version(name)}, locked {version}"
    recorded = library_versions()
    for name in ("torch", "torchvision", "numpy", "timm"):
        # torch's own version string carries the CUDA build as a local label (2.14.1+cu130).
        assert Version(recorded[name]).public == Version(pins[name]).public, (name, recorded[name], pins[name])

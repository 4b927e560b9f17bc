"""Docs that cannot drift: every ``greenkd_utils/...``, ``notebooks/...``, ``scripts/...`` or ``benchmarks/...``
path named in the README, in ``docs/*.md`` or in a notebook's text must exist."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PATH = re.compile(r"(?<![\w./-])((?:greenkd_utils|notebooks|scripts|benchmarks)/[A-Za-z0-9_./<>*-]*[A-Za-z0-9_/])")


def _texts():
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        yield path.relative_to(REPO), path.read_text()
    for path in sorted((REPO / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        yield path.relative_to(REPO), "\n".join("".join(c["source"]) for c in cells)


# Folders a script writes (ignored by git), which a fresh clone does not have yet.
OUTPUT_FOLDERS = {line.strip().rstrip("/") for line in (REPO / ".gitignore").read_text().splitlines()
                  if line.strip().endswith("/")}


def named_paths(text: str):
    for match in PATH.finditer(text):
        path = match.group(1).rstrip("/.")
        if "<" in path or "*" in path or path in OUTPUT_FOLDERS:  # a pattern (notebooks/*.ipynb) or an output
            continue
        yield path


@pytest.mark.parametrize("source,text", list(_texts()), ids=lambda v: str(v) if isinstance(v, Path) else "")
def test_every_named_path_exists(source, text):
    missing = sorted({p for p in named_paths(text) if not (REPO / p).exists()})
    assert not missing, f"{source} names paths that do not exist: {missing}"


def test_the_check_catches_a_missing_path():
    assert list(named_paths("see `greenkd_utils/engine.py` and notebooks/table1_carbon_footprint.ipynb.")) == [
        "greenkd_utils/engine.py", "notebooks/table1_carbon_footprint.ipynb"]
    assert not (REPO / "greenkd_utils/engine.py").exists()

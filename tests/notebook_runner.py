"""Shared helper for the notebook smoke tests: execute a notebook with papermill at the smoke profile."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def kernel_name() -> str:
    from jupyter_client.kernelspec import find_kernel_specs

    return "greenkd" if "greenkd" in find_kernel_specs() else "python3"


def smoke_dirs(root: Path) -> dict:
    return {"results": root / "results", "out": root / "figures"}


def execute(name: str, dirs: dict, **params) -> Path:
    """Run notebooks/<name>.ipynb at the smoke profile; returns the folder it wrote its outputs to."""
    import papermill as pm

    out = dirs["out"]
    out.mkdir(parents=True, exist_ok=True)
    pm.execute_notebook(
        str(REPO / "notebooks" / f"{name}.ipynb"),
        str(out / f"{name}.ipynb"),
        parameters={"profile": "smoke", "results_dir": str(dirs["results"]), "output_dir": str(out), **params},
        kernel_name=kernel_name(),
        cwd=str(REPO / "notebooks"),
        progress_bar=False,
    )
    return out

"""Module paths from before the package was arranged by data flow, kept importable.

Notebooks, scripts and stored analyses written against ``greenkd_utils.engine``, ``greenkd_utils.carbon``,
``greenkd_utils.dfkd.trainer`` and the like keep working: an import of an old path gets the module that holds
that code now (the same module object, so patching it patches the real thing), or, where one old module was
split, a module that looks names up in the new ones. Nothing here is used by greenkd itself.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
from typing import Dict, Tuple

_PACKAGE = "greenkd_utils"

# old path -> the module that now holds all of its code
MOVED: Dict[str, str] = {
    "engine": "runs.tasks.classification",
    "store": "runs.store",
    "sweep": "runs.sweep",
    "successive_halving": "runs.successive_halving",
    "temperature": "core.temperature",
    "losses": "core.losses",
    "models": "core.models",
    "data": "core.data",
    "augment": "core.augment",
    "checks": "core.checks",
    "config": "core.config",
    "flops": "energy.flops",
    "profiles": "settings.profiles",
    "knobs": "settings.knobs",
    "extra_tables": "paper.extra_tables",
    "reference": "paper.reference",
    "plotting": "paper.plotting",
    "manifest": "paper.manifest",
    "pairs": "paper.table7_teacher_student_pairs",
    "temperature_study": "paper.figure3_temperature_and_batch",
    "curves": "paper.figure1_carbon_curves",
    "beyond_temperature_strategies": "paper.beyond_temperature_strategies",
    "gradcam": "analysis.gradcam",
    "inference": "analysis.inference",
    "predictions": "analysis.predictions",
    "loss_scale": "analysis.loss_scale",
    "verdict": "analysis.verdict",
    "dfkd.config": "core.dfkd.config",
    "dfkd.generator": "core.dfkd.generator",
    "dfkd.objectives": "core.dfkd.objectives",
    "dfkd.pool": "core.dfkd.pool",
    "dfkd.synthesizers": "core.dfkd.synthesizers",
    "dfkd.experiment": "paper.table6_dfkd",
    "dfkd.figures": "paper.table6_dfkd_figures",
    "detection.batches": "core.detection.batches",
    "detection.config": "core.detection.config",
    "detection.data": "core.detection.data",
    "detection.evaluation": "core.detection.evaluation",
    "detection.loss": "core.detection.loss",
    "detection.models": "core.detection.models",
    "detection.shapes": "core.detection.shapes",
    "detection.experiment": "paper.table4_detection",
}

# old path -> (modules to look names up in, in order; names that changed: old name -> "module:new name")
SPLIT: Dict[str, Tuple[Tuple[str, ...], Dict[str, str]]] = {
    "carbon": (("energy.meter", "energy.report", "energy.sensors", "energy.channels"), {}),
    "experiments": (("paper.experiments", "paper.table1_carbon_footprint", "paper.table4_kd_losses"), {}),
    "metrics": (("analysis.metrics", "paper.table5_metrics"), {}),
    "quantization": (
        ("core.quantization", "paper.table8_quantization", "runs.tasks.qat"),
        {"QATResult": "runs.record:RunResult"},
    ),
    "dfkd.trainer": (
        ("runs.tasks.data_free",),
        {"DFKDResult": "runs.record:RunResult", "tuned_dfkd": "runs.sweep:tuned_sweep",
         "energy_between": "energy.phases:energy_between"},
    ),
    "detection.training": (
        ("runs.tasks.detection",),
        {"DetectionRunResult": "runs.record:RunResult", "tuned_detection_sweep": "runs.sweep:tuned_sweep"},
    ),
    "dfkd": (
        ("core.dfkd.config", "core.dfkd.pool", "core.dfkd.synthesizers", "paper.table6_dfkd", "runs.tasks.data_free"),
        {"DFKDResult": "runs.record:RunResult", "tuned_dfkd": "runs.sweep:tuned_sweep",
         "experiment": "paper.table6_dfkd", "figures": "paper.table6_dfkd_figures", "trainer": "legacy:dfkd.trainer"},
    ),
    "detection": (
        ("core.detection.config", "paper.table4_detection", "runs.tasks.detection"),
        {"DetectionRunResult": "runs.record:RunResult", "experiment": "paper.table4_detection",
         "training": "legacy:detection.training"},
    ),
}


def _resolve(target: str):
    if target.startswith("legacy:"):
        return importlib.import_module(f"{_PACKAGE}.{target[len('legacy:'):]}")
    module, _, name = target.partition(":")
    found = importlib.import_module(f"{_PACKAGE}.{module}")
    return getattr(found, name) if name else found


def _split_module(old: str) -> types.ModuleType:
    sources, renamed = SPLIT[old]
    module = types.ModuleType(f"{_PACKAGE}.{old}", f"Moved: the names of {old} now live in {', '.join(sources)}.")

    def __getattr__(name: str):
        if name in renamed:
            return _resolve(renamed[name])
        for source in sources:
            found = importlib.import_module(f"{_PACKAGE}.{source}")
            if hasattr(found, name):
                return getattr(found, name)
        raise AttributeError(f"module {module.__name__!r} (moved to {', '.join(sources)}) has no attribute {name!r}")

    module.__getattr__ = __getattr__
    if "." not in old and any(other.startswith(old + ".") for other in {**MOVED, **SPLIT}):
        module.__path__ = []  # a package: its old submodules import too
    return module


class _LegacyPaths(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        old = fullname[len(_PACKAGE) + 1:] if fullname.startswith(_PACKAGE + ".") else None
        if old in MOVED or old in SPLIT:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        old = spec.name[len(_PACKAGE) + 1:]
        if old in MOVED:
            return importlib.import_module(f"{_PACKAGE}.{MOVED[old]}")
        return _split_module(old)

    def exec_module(self, module):
        pass


def install() -> None:
    if not any(isinstance(finder, _LegacyPaths) for finder in sys.meta_path):
        sys.meta_path.append(_LegacyPaths())

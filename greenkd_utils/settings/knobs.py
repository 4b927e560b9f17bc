"""The notebooks' knobs: one registry of names, what each accepts, and the parser that enforces it.

A knob reaches the library in many shapes. papermill's ``-p seeds '[0, 1]'`` passes the
*string* ``"[0, 1]"``, ``-p seeds 3`` an int, ``-y`` and ``parameters={...}`` real YAML
or Python values; someone at a JupyterLab prompt types ``seeds = "0,1"``. The one set-up of
every notebook (:func:`greenkd_utils.paper.experiments.setup`, through
:mod:`greenkd_utils.settings.notebooks`) and every settings reader send their keyword arguments
through :func:`coerce`, so each of these works and anything else fails before a single run
starts, with an error that names the knob and says what it accepts.

``None`` always means "the profile's value" (or the notebook's setting), except for
``profile``. The old names ``dataset`` and ``carbon_intensity`` still work, with a
``FutureWarning``, as :data:`ALIASES` of ``datasets`` and ``carbon_intensity_g_per_kwh``.
"""

from __future__ import annotations

import math
import numbers
import operator
import os
import re
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence

import yaml

from greenkd_utils.analysis.gradcam import TARGETS
from greenkd_utils.energy.checks import is_bool
from greenkd_utils.core.data import DATASETS
from greenkd_utils.core.dfkd.config import METHODS
from greenkd_utils.core.losses import KD_LOSSES
from greenkd_utils.core.models import check_model_name
from greenkd_utils.core.quantization import BACKENDS
from greenkd_utils.runs.executors import EXECUTORS

# The profiles, one YAML file each in greenkd_utils/configs/ (greenkd_utils.settings.loader reads them).
PROFILES = ("smoke", "demo", "paper")

# What the single-run arm of a comparison may be: the paper's per-batch draw, a per-sample draw, or CTKD's
# learned temperature (docs/protocol.md, "Temperature strategies beyond the paper").
STOCHASTIC_ARM_MODES = ("stochastic", "stochastic_per_sample", "ctkd")


class _Refused(ValueError):
    """Raised inside a parser; :func:`parse` turns it into the error a user sees."""


@dataclass(frozen=True)
class Knob:
    name: str
    accepts: str
    parse: Callable[[Any], Any]
    help: str


# ---------------------------------------------------------------------------------------------
# Reading what papermill and people send
# ---------------------------------------------------------------------------------------------
_NONE_TEXT = {"", "none", "null", "~"}


def _text_value(value: Any) -> Any:
    """A string as papermill's ``-p`` sends it, read as the value it spells; other values unchanged.

    ``"[0, 1]"`` and ``"{...}"`` are YAML; ``"0,1"`` is a list; ``"3"`` and ``"2.5"`` numbers;
    ``"None"``/``"null"``/``""`` None; anything else stays a string. Plain scalars are not read
    as YAML, whose 1.1 rules would turn ``"yes"`` into True and ``"1:20"`` into 80.
    """
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.lower() in _NONE_TEXT:
        return None
    if text[:1] in "[{":
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise _Refused(f"it is not valid YAML ({str(error).splitlines()[0]})") from None
    if "," in text:
        return [_scalar_text(part) for part in text.split(",") if part.strip()]
    return _scalar_text(text)


def _scalar_text(text: str) -> Any:
    text = text.strip()
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def _number_from(value: Any) -> Any:
    """The value papermill or a caller gave, read as a number where it is text; a boolean is refused."""
    if is_bool(value):
        raise _Refused("a boolean is not a number")
    return _scalar_text(value) if isinstance(value, str) else value


def _integer(value: Any) -> int:
    number = _number_from(value)
    whole = isinstance(number, numbers.Integral) or (
        isinstance(number, numbers.Real) and math.isfinite(number) and float(number).is_integer()
    )
    if not whole:
        raise _Refused("it is not a whole number")
    return int(number)


def _real(value: Any) -> float:
    number = _number_from(value)
    if not isinstance(number, numbers.Real):
        raise _Refused("it is not a number")
    return float(number)


def _items(value: Any) -> List[Any]:
    """A list from a list, tuple, range, array or a single value (one item)."""
    value = _text_value(value)
    if isinstance(value, (list, tuple, range)) or type(value).__name__ == "ndarray":
        items = list(value)
    elif isinstance(value, Mapping) or isinstance(value, (set, frozenset)):
        raise _Refused("it is not a list")
    else:
        items = [value]
    if not items:
        raise _Refused("the list is empty")
    return items


def _no_repeats(items: List[Any]) -> List[Any]:
    repeated = sorted({repr(x) for x in items if items.count(x) > 1})
    if repeated:
        raise _Refused(f"{', '.join(repeated)} is listed more than once")
    return items


# ---------------------------------------------------------------------------------------------
# Parsers: each takes the raw value (None already handled) and returns the clean one
# ---------------------------------------------------------------------------------------------
def _number_where(read: Callable[[Any], Any], check: Callable[[Any], bool], refusal: str) -> Callable[[Any], Any]:
    def parse_number(value: Any) -> Any:
        number = read(_text_value(value))
        if not check(number):
            raise _Refused(refusal)
        return number

    return parse_number


def _int_at_least(low: int) -> Callable[[Any], int]:
    return _number_where(_integer, lambda n: n >= low, f"it is below {low}")


def _float_where(check: Callable[[float], bool], rule: str) -> Callable[[Any], float]:
    return _number_where(_real, lambda v: math.isfinite(v) and check(v), f"it must be {rule}")


def _list_of(parse_item: Callable[[Any], Any]) -> Callable[[Any], List[Any]]:
    def parse_list(value: Any) -> List[Any]:
        parsed = []
        for item in _items(value):
            try:
                parsed.append(parse_item(item))
            except _Refused as reason:
                raise _Refused(f"{item!r}: {reason}") from None
        return _no_repeats(parsed)

    return parse_list


def _choice(choices: Callable[[], Sequence[str]], what: str) -> Callable[[Any], str]:
    # The choices are read when a value is parsed: a registry filled after import (a model added by name) counts.
    def parse_choice(value: Any) -> str:
        value = _text_value(value)
        valid = tuple(choices())
        if not isinstance(value, str) or value not in valid:
            raise _Refused(f"unknown {what}; valid: {', '.join(valid)}")
        return value

    return parse_choice


def _model(value: Any) -> str:
    # A built-in model, or any timm model as "timm:<name>"; the refusal names close matches.
    value = _text_value(value)
    try:
        check_model_name(value)
    except ValueError as refusal:
        raise _Refused(str(refusal)) from None
    return value


def _folder(value: Any) -> Optional[str]:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, str):
        return value.strip() or None
    raise _Refused("it is not a folder path (a string)")


_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def _device(value: Any) -> str:
    if not isinstance(value, str) or not _DEVICE.match(value.strip()):
        raise _Refused("unknown device")
    return value.strip()


def _boolean(value: Any) -> bool:
    if is_bool(value):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no"):
        return value.strip().lower() in ("true", "yes")
    raise _Refused("it is not true or false")


_positive_int = _int_at_least(1)
_tau = _float_where(lambda t: t > 0, "> 0 and finite")
_COMPARISONS = {">": operator.gt, ">=": operator.ge}


def _accepts(what: str, unit: str) -> str:
    return f"{what} ({unit})" if unit else what


def _whole_knob(name: str, low: int, help: str, unit: str = "") -> Knob:
    """A knob of one whole number >= ``low``: the bound it states is the bound it enforces."""
    return Knob(name, _accepts(f"a whole number >= {low}", unit), _int_at_least(low), help)


def _real_knob(name: str, bound: str, help: str, unit: str = "") -> Knob:
    """A knob of one finite number within ``bound`` (``"> 0"``, ``">= 1"``), stated and enforced alike."""
    comparison, low = bound.split()
    compare, low = _COMPARISONS[comparison], float(low)
    parse = _float_where(lambda v: compare(v, low), f"{bound} and finite")
    return Knob(name, _accepts(f"a number {bound}", unit), parse, help)


_KNOB_LIST = [
    Knob("profile", "a profile name", _choice(lambda: PROFILES, "profile"),
         "which scale: smoke (seconds), demo (digits on a CPU) or paper (the paper's data and settings)"),
    Knob("datasets", "a list of dataset names, e.g. [cifar10, cifar100] or \"cifar10,cifar100\" (a notebook "
         "that shows one dataset uses the first)", _list_of(_choice(lambda: DATASETS, "dataset")),
         "the datasets to train on"),
    Knob("seeds", "a list of whole numbers >= 0, e.g. [0, 1] or \"0,1\" (a single number is one seed)",
         _list_of(_int_at_least(0)), "the seeds; accuracies are means over them"),
    _whole_knob("epochs", 1, "epochs of the student and KD runs"),
    _whole_knob("teacher_epochs", 1, "epochs of the teachers (another value trains new teachers)"),
    _real_knob("lr", "> 0", "learning rate of the student and KD runs"),
    Knob("tau_grid", "a list of temperatures > 0, e.g. [1, 2, 4] or \"1,2,4\"", _list_of(_tau),
         "the fixed taus of the tuned baseline (one full training each)"),
    Knob("losses", "a list of KD losses, e.g. [hkd, cmc, dml]",
         _list_of(_choice(lambda: sorted(KD_LOSSES), "KD loss")),
         "the KD losses to compare"),
    Knob("loss", "a KD loss name", _choice(lambda: sorted(KD_LOSSES), "KD loss"),
         "the KD loss of the tuned and stochastic runs shown"),
    _whole_knob("seed", 0, "which seed's models are shown"),
    Knob("teacher_model", "a model name or timm:<name>", _model, "the teacher's architecture"),
    Knob("student_model", "a model name or timm:<name>", _model, "the student's architecture"),
    Knob("device", "cpu, cuda, cuda:N, mps or auto", _device, "where to train"),
    Knob("data_root", "a folder path", _folder, "the folder holding the paper's datasets"),
    Knob("results_dir", "a folder path", _folder, "the run store (one folder per run)"),
    Knob("output_dir", "a folder path", _folder, "where tables and figures are written"),
    _real_knob("pue", ">= 1", "power usage effectiveness of the data centre (the paper's: 1.67)"),
    _real_knob("carbon_intensity_g_per_kwh", ">= 0", "grams of CO2eq per kWh of electricity",
               unit="g CO2eq per kWh"),
    _whole_knob("train_subset", 1, "train on a class-stratified subset of this many training images",
                unit="images"),
    _whole_knob("test_subset", 1, "test on a class-stratified subset of this many test images", unit="images"),
    Knob("batch_sizes", "a list of whole numbers >= 1, e.g. [64, 128]", _list_of(_positive_int),
         "the batch sizes of Figure 3 (b)"),
    _real_knob("min_inference_s", "> 0",
               "repeat test-set passes until the metered block lasts this long", unit="seconds"),
    _whole_knob("inference_batch_size", 1, "batch size of the inference passes"),
    _whole_knob("example_class", 0, "Figure 4 (a) shows the first test image of this class", unit="a class index"),
    _whole_knob("gradcam_images", 1, "how many test images Grad-CAM explains"),
    Knob("gradcam_target", "a Grad-CAM target name", _choice(lambda: TARGETS, "Grad-CAM target"),
         "explain the true class or the model's top class"),
    Knob("qat_backend", "auto or a quantization backend name",
         _choice(lambda: ("auto",) + tuple(BACKENDS), "quantization backend"),
         "the int8 kernels of quantization-aware training"),
    _whole_knob("qat_epochs", 1, "epochs of quantization-aware fine-tuning"),
    Knob("methods", "a list of data-free KD synthesizers, e.g. [cmi, deepinversion]",
         _list_of(_choice(lambda: METHODS, "data-free KD method")), "the synthesizers of Table 6"),
    _whole_knob("synthesis_iterations", 1, "optimisation steps of one synthesis round (data-free KD)"),
    _whole_knob("synthesis_batch_size", 2, "images synthesized per round (data-free KD)"),
    _whole_knob("student_steps", 1, "student steps after each synthesis round (data-free KD)"),
    _whole_knob("image_size", 16, "side of the square images the detectors see", unit="pixels"),
    Knob("temperature_mode", "stochastic, stochastic_per_sample or ctkd",
         _choice(lambda: STOCHASTIC_ARM_MODES, "temperature mode"),
         "how the single-run arm sets tau: per batch (the paper's), per sample, or learned (CTKD)"),
    Knob("logit_standardization", "true or false", _boolean,
         "z-score teacher and student logits before the softened softmax (HKD and DML; tau is the base)"),
    _real_knob("margin_pct", "> 0", "the equivalence margin of the stochastic-vs-tuned verdict",
               unit="accuracy points"),
    _whole_knob("num_workers", 0, "DataLoader workers of the detection augmentation (0: in the notebook's process)"),
    Knob("executor", "local or ray", _choice(lambda: EXECUTORS, "executor"),
         "who trains the notebook's runs: this kernel, one after another, or Ray, in parallel"),
    Knob("ray_address", "a Ray cluster address, e.g. auto or ray://head:10001", _folder,
         "join this Ray cluster (executor ray) instead of starting a local runtime"),
]

KNOBS: Dict[str, Knob] = {knob.name: knob for knob in _KNOB_LIST}

# Old name -> the knob it became.
ALIASES: Dict[str, str] = {"dataset": "datasets", "carbon_intensity": "carbon_intensity_g_per_kwh"}


# ---------------------------------------------------------------------------------------------
# The public parsing API
# ---------------------------------------------------------------------------------------------
def parse(name: str, value: Any) -> Any:
    """``value`` as the knob ``name`` takes it; a ValueError names the knob and what it accepts.

    None is "the profile's value" for every knob but ``profile``.
    """
    if name in ALIASES:
        return parse(ALIASES[name], value)
    if name not in KNOBS:
        raise ValueError(f"unknown knob {name!r}; known knobs: {', '.join(KNOBS)}")
    knob = KNOBS[name]
    try:
        if name != "profile" and _text_value(value) is None:
            return None
        return knob.parse(value)
    except _Refused as reason:
        raise ValueError(f"{name}={value!r} is refused: {reason}. {name} accepts {knob.accepts}") from None


def resolve_aliases(values: Mapping[str, Any]) -> Dict[str, Any]:
    """``values`` with every old name moved to its knob (a FutureWarning says so).

    An old name left at None is dropped; an old and a new name with different values are an error.
    """
    out = {k: v for k, v in values.items() if k not in ALIASES}
    for alias, canonical in ALIASES.items():
        if alias not in values or values[alias] is None:
            continue
        warnings.warn(
            f"the knob {alias!r} is now called {canonical!r}; use {canonical}=... (the old name will go)",
            FutureWarning,
            stacklevel=3,
        )
        value = parse(canonical, values[alias])
        if out.get(canonical) is not None and parse(canonical, out[canonical]) != value:
            raise ValueError(
                f"{alias}={values[alias]!r} and {canonical}={out[canonical]!r} disagree; give only {canonical}"
            )
        out[canonical] = value
    return out


def coerce(values: Mapping[str, Any]) -> Dict[str, Any]:
    """Keyword arguments of a setup function with old names resolved and every known knob parsed.

    Names that are not knobs pass through unchanged; the function they are meant for checks them.
    """
    return {name: parse(name, value) if name in KNOBS else value for name, value in resolve_aliases(values).items()}


def describe(names: Optional[Iterable[str]] = None) -> str:
    """One line per knob: name, help and what it accepts (every knob when ``names`` is None)."""
    chosen = KNOBS if names is None else [n for n in names if n in KNOBS]
    lines = []
    for name in chosen:
        default = "" if name == "profile" else "; None: the profile's"
        lines.append(f"{name}: {KNOBS[name].help} ({KNOBS[name].accepts}{default})")
    return "\n".join(lines)

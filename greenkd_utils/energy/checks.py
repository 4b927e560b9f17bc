"""Checks of numeric settings shared by the energy meter, the temperature schedules and the run configs, so
that a bad value is refused by name, with what the setting accepts, before anything trains. They live in the
bottom layer because the meter checks its PUE and carbon intensity with them.

They take a value as given. The notebooks' knobs (:mod:`greenkd_utils.settings.knobs`) first read the text papermill
passes (``"3"`` becomes 3) and then arrive here with real numbers; in code, a string, a bool or 2.5 where a
whole number belongs is a mistake, and a NaN or an infinity would only surface epochs later as a NaN loss or
a nonsense carbon bill.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Optional


def is_bool(value: Any) -> bool:
    # numpy's bool_ is not a bool subclass, but is just as much a mistake where a number belongs.
    return isinstance(value, bool) or type(value).__name__ == "bool_"


def whole_number(name: str, value: Any, minimum: Optional[int] = None) -> int:
    """``value`` as an int, if it is a whole number (int or numpy integer, not a bool) of at least ``minimum``."""
    accepts = "a whole number" + (f" >= {minimum}" if minimum is not None else "")
    if is_bool(value) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be {accepts}; got {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be {accepts}; got {value!r}")
    return int(value)


def real_number(
    name: str,
    value: Any,
    *,
    at_least: Optional[float] = None,
    above: Optional[float] = None,
    at_most: Optional[float] = None,
) -> float:
    """``value`` as a float, if it is a finite real number (not a bool or a string) within the given bounds.

    The error reads like the notebooks' knobs: ``pue must be >= 1 and finite; got 0.5``.
    """
    bounds = [f">= {at_least:g}" if at_least is not None else "", f"> {above:g}" if above is not None else "",
              f"<= {at_most:g}" if at_most is not None else ""]
    rule = " and ".join([b for b in bounds if b] + ["finite"])
    if is_bool(value) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number {rule}; got {value!r} ({type(value).__name__})")
    number = float(value)
    if not math.isfinite(number) or (at_least is not None and number < at_least) or (
            above is not None and number <= above) or (at_most is not None and number > at_most):
        raise ValueError(f"{name} must be {rule}; got {value!r}")
    return number

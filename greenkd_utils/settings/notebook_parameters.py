"""A notebook's knobs as its ``parameters`` cell declares them and papermill set them.

papermill injects its values as plain assignments in a cell of its own, right after the notebook's
``parameters`` cell, so the knobs are names in the notebook's namespace. :func:`declared_knobs` collects
them, so that a notebook names each knob once (in its ``parameters`` cell) and passes them all in one call::

    exp = ex.setup(notebook="table1_carbon_footprint", **declared_knobs(globals()))

It refuses a name papermill injected that the ``parameters`` cell does not declare (papermill itself only
warns "Passed unknown parameter" and runs on, ignoring a misspelt knob), and parses the declared ones with
:mod:`greenkd_utils.settings.knobs`.
"""

from __future__ import annotations

import ast
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from IPython.core.inputtransformer2 import TransformerManager

from greenkd_utils.settings.knobs import ALIASES, KNOBS, parse, resolve_aliases

# papermill's injected cell starts with this line (papermill.parameterize, "# Parameters").
INJECTED_CELL_HEADER = "# Parameters"


def _assigned_names(source: str) -> List[str]:
    """Names assigned at the top level of a cell's code, in order."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        try:
            tree = ast.parse(TransformerManager().transform_cell(source))
        except Exception:  # not Python we can read: it declares nothing we can check
            return []
    names: List[str] = []
    for statement in tree.body:
        targets = statement.targets if isinstance(statement, ast.Assign) else (
            [statement.target] if isinstance(statement, ast.AnnAssign) else [])
        for target in targets:
            for node in ast.walk(target):
                if isinstance(node, ast.Name) and node.id not in names:
                    names.append(node.id)
    return names


def _only_assignments(source: str) -> bool:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return False
    return bool(tree.body) and all(isinstance(s, (ast.Assign, ast.AnnAssign)) for s in tree.body)


def _declared_and_injected(executed: Sequence[str]) -> Tuple[Optional[List[str]], List[str]]:
    """(names the notebook declares, or None when no cell declares any; names papermill injected), from the
    cells executed before this one.

    IPython keeps every executed cell's source in ``In``. papermill runs its injected cell right after
    the notebook's parameters cell (a cell of assignments only, which a cell merely starting with the
    same comment is not preceded by). Without papermill, every cell of assignments that sets ``profile``
    declares knobs: the parameters cell, and any cell run after it to change some of them.
    """
    for index in range(len(executed) - 1, 0, -1):
        if executed[index].lstrip().startswith(INJECTED_CELL_HEADER) and _only_assignments(executed[index - 1]):
            return _assigned_names(executed[index - 1]), _assigned_names(executed[index])
    declared: List[str] = []
    for source in executed:
        names = _assigned_names(source) if _only_assignments(source) else []
        if "profile" in names:
            declared += [name for name in names if name not in declared]
    return declared or None, []


def declared_knobs(namespace: Mapping[str, Any]) -> Dict[str, Any]:
    """The knobs the notebook's ``parameters`` cell declares, with their current values, parsed.

    Refuses (ValueError) any name papermill injected that the parameters cell does not declare and
    that is not an old name of a declared knob, naming it and the notebook's knobs. Old names map to
    their knob with a FutureWarning.

    Outside IPython (no ``In`` history) every knob of :data:`~greenkd_utils.settings.knobs.KNOBS` found
    in ``namespace`` is taken.
    """
    executed = list(namespace.get("In") or [])[:-1]  # the last one is the cell calling this
    declared, injected = _declared_and_injected(executed)
    if declared is None:
        declared = [name for name in KNOBS if name in namespace]

    aliases = {alias: canonical for alias, canonical in ALIASES.items() if canonical in declared and alias not in declared}
    unknown = [name for name in injected if name not in declared and name not in aliases]
    if unknown:
        old = [f"{a} (now {c})" for a, c in aliases.items()]
        raise ValueError(
            f"unknown notebook parameter(s) {', '.join(unknown)}; this notebook's knobs: {', '.join(declared)}"
            + (f"; old names still accepted: {', '.join(old)}" if old else "")
        )

    values = {name: namespace[name] for name in declared if name in namespace}
    for alias in (name for name in injected if name in aliases):
        canonical = aliases[alias]
        given = {alias: namespace[alias]}
        if canonical in injected:
            given[canonical] = namespace[canonical]
        values[canonical] = resolve_aliases(given)[canonical]
    return {name: parse(name, value) if name in KNOBS else value for name, value in values.items()}


def executed_by_papermill(namespace: Mapping[str, Any]) -> bool:
    """Whether papermill runs this notebook: its injected parameters cell is in the kernel's history.

    A notebook run by papermill has no front end to render widgets, so a cell that offers them draws its
    static figure instead.
    """
    executed = list(namespace.get("In") or [])[:-1]
    return any(source.lstrip().startswith(INJECTED_CELL_HEADER) for source in executed)

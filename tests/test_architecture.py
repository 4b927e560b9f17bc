"""The package's shape, read from its source with ``ast`` (nothing is imported): imports follow the layers,
no import cycles, registries are leaves, and nothing only passes names along.

Every import counts, at any depth: a function-local or ``TYPE_CHECKING`` import is as much a dependency as
one at the top of a module.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

LAYERS = ("energy", "core", "runs", "analysis", "settings", "paper")
"""Bottom to top: a module may import only from its own layer or a layer below it."""

PACKAGE = "greenkd_utils"
ROOT = Path(__file__).resolve().parents[1]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: Dict[str, Path] = {_module_name(p): p for p in sorted((ROOT / PACKAGE).rglob("*.py"))}
TREES: Dict[str, ast.Module] = {name: ast.parse(path.read_text(), str(path)) for name, path in MODULES.items()}


def _is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def _where(module: str, node: ast.AST) -> str:
    return f"{MODULES[module].relative_to(ROOT)}:{node.lineno}"


def _imports(module: str) -> Iterator[Tuple[ast.stmt, str, Optional[str]]]:
    """(statement, module imported, name taken from it or None) for every greenkd_utils import in ``module``.

    ``from package import submodule`` imports the submodule; relative imports are resolved.
    """
    for node in ast.walk(TREES[module]):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    yield node, alias.name, None
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if _is_package(module) else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)] + ([node.module] if node.module else [])
                source = ".".join(base)
            else:
                source = node.module or ""
            if source != PACKAGE and not source.startswith(PACKAGE + "."):
                continue
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                if submodule in MODULES:
                    yield node, submodule, None
                else:
                    yield node, source, alias.name


def _layer(module: str) -> Optional[str]:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def _statement(module: str, node: ast.stmt) -> str:
    return f"{_where(module, node)}: {ast.unparse(node)}"


def _listing(found: List[str]) -> str:
    return "\n".join(dict.fromkeys(found))  # one line per statement, however many names it imports


def test_every_module_belongs_to_a_layer():
    outside = [MODULES[m].relative_to(ROOT) for m in MODULES if m != PACKAGE and _layer(m) is None]
    assert not outside, f"modules outside the layers {LAYERS}: {outside}"


def test_imports_go_only_to_the_same_layer_or_below():
    upward = []
    for module in MODULES:
        layer = _layer(module)
        for node, imported, _ in _imports(module):
            target = _layer(imported)
            if imported == PACKAGE:  # the package itself holds only its version (it imports nothing: see below)
                continue
            if layer is None or target is None:
                upward.append(f"{_statement(module, node)}  (outside the layers)")
            elif LAYERS.index(target) > LAYERS.index(layer):
                upward.append(f"{_statement(module, node)}  ({layer} imports {target}, a layer above it)")
    assert not upward, "imports against the layer order " + " < ".join(LAYERS) + ":\n" + _listing(upward)


def _graph() -> Dict[str, Set[str]]:
    return {module: {imported for _, imported, _ in _imports(module)} - {module} for module in MODULES}


def _find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """One import cycle as [a, b, ..., a], or None; depth-first, without recursion."""
    state: Dict[str, int] = {}  # 1: on the current path, 2: finished
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            following = next(stack[-1], None)
            if following is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(following) == 1:
                return path[path.index(following):] + [following]
            elif not state.get(following):
                state[following] = 1
                path.append(following)
                stack.append(iter(sorted(graph.get(following, ()))))
    return None


def test_the_cycle_search_finds_a_cycle_and_nothing_else():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycles():
    graph = _graph()
    cycle = _find_cycle(graph)
    if cycle:
        lines = []
        for module, following in zip(cycle, cycle[1:]):
            node = next(n for n, imported, _ in _imports(module) if imported == following)
            lines.append(_statement(module, node))
        raise AssertionError("import cycle " + " -> ".join(cycle) + ":\n" + "\n".join(lines))


def test_registries_are_leaves():
    registries = [m for m in MODULES if MODULES[m].name == "registry.py"]
    leaking = [_statement(m, node) for m in registries for node, _, _ in _imports(m)]
    assert not leaking, "registries must be leaf modules, and these import from greenkd_utils:\n" + _listing(leaking)


def test_package_inits_import_no_submodules():
    found = [_statement(m, node) for m in MODULES if _is_package(m) for node, _, _ in _imports(m)]
    assert not found, "package __init__.py files that import modules:\n" + _listing(found)


def test_no_legacy_module():
    legacy = [MODULES[m].relative_to(ROOT) for m in MODULES if m.rsplit(".", 1)[-1] == "legacy"]
    assert not legacy, f"old module paths are not kept importable: remove {legacy}"


def _defined_names(module: str) -> Set[str]:
    """Names a module defines at its top level (functions, classes, assignments), not the ones it imports."""
    names: Set[str] = set()
    pending: List[ast.AST] = list(TREES[module].body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)  # and not the names inside it
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif not isinstance(node, (ast.Import, ast.ImportFrom)):
            pending.extend(ast.iter_child_nodes(node))
    return names


def test_names_are_imported_from_the_module_that_defines_them():
    # A module that imports names only to offer them to others is a hub: its importers should go to the source.
    borrowed = []
    for module in MODULES:
        for node, imported, name in _imports(module):
            if name is not None and name not in _defined_names(imported):
                borrowed.append(f"{_statement(module, node)}  ({name} is not defined in {imported})")
    assert not borrowed, "names imported through a module that does not define them:\n" + _listing(borrowed)

"""The import structure that docs/architecture.md describes, checked from the source.

The layer table of docs/architecture.md (section "Layers") is read as data: each row
lists its modules, lowest layer first. Every ``from xentstream...`` / ``import
xentstream...`` statement of the package, module level or inside a function (lazy
imports of optional backends count: they are the same dependency, only later), is an
edge of the import graph, parsed with ``ast`` without importing anything (imports
under ``if TYPE_CHECKING:`` serve annotations only and are not edges). The tests
hold the code and the page to each other: every module is in exactly one row, imports
point to the same row or one above it in the table (a lower layer), the graph has no
cycle, and no module reaches for another module's ``_private`` names.

A submodule's implicit import of its package (``xentstream/__init__.py`` runs before
any ``xentstream.x``) is Python's mechanics, not a dependency, and is not an edge.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "xentstream"
ARCHITECTURE = ROOT / "docs" / "architecture.md"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _layers() -> list[tuple[str, list[str]]]:
    """(layer name, module names) per row of the layer table, lowest layer first.

    A backticked ``*.py`` in the modules column is a path from the repository root
    when it has a slash, else a file in the directory of the row's last full path
    (``xentstream/_kernels/exact.py``, then ``rows.py``), or in ``xentstream/``.
    """
    text = ARCHITECTURE.read_text(encoding="utf-8")
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    layers = []
    for line in rows[2:]:  # after the header and its separator
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        directory = "xentstream"
        names = []
        for token in re.findall(r"`([^`\s]+\.py)`", cells[1]):
            if "/" in token:
                directory = token.rsplit("/", 1)[0]
                path = ROOT / token
            else:
                path = ROOT / directory / token
            names.append(_module_name(path))
        layers.append((cells[0], names))
    return layers


LAYERS = _layers()
LAYER_OF = {name: index for index, (_, names) in enumerate(LAYERS) for name in names}


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of ``tree`` except the bodies of ``if TYPE_CHECKING:`` (names for
    annotations only, never imported at run time)."""
    found, stack = [], [tree]
    while stack:
        node = stack.pop()
        found.append(node)
        children = node.orelse if _is_type_checking(node) else ast.iter_child_nodes(node)
        stack.extend(children)
    return found


def _imports(module: str) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, names taken from it) for every xentstream import."""
    found = []
    for node in _nodes(ast.parse(MODULES[module].read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{module}:{node.lineno}: relative import")
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "xentstream":
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                if submodule in MODULES:  # ``from xentstream._kernels import cpu``
                    found.append((node.lineno, submodule, []))
                else:
                    found.append((node.lineno, node.module, [alias.name]))
        elif isinstance(node, ast.Import):
            found += [
                (node.lineno, alias.name, [])
                for alias in node.names
                if alias.name.split(".")[0] == "xentstream"
            ]
    return found


def _graph() -> dict[str, set[str]]:
    return {
        module: {target for _, target, _ in _imports(module) if target != module}
        for module in MODULES
    }


def test_the_layer_table_lists_every_module_once() -> None:
    listed = [name for _, names in LAYERS for name in names]
    repeated = sorted({name for name in listed if listed.count(name) > 1})
    assert not repeated, f"modules in two rows of the layer table: {repeated}"
    missing = sorted(set(MODULES) - set(listed))
    assert not missing, f"add these modules to the layer table of {ARCHITECTURE.name}: {missing}"
    stale = sorted(set(listed) - set(MODULES))
    assert not stale, f"the layer table names modules that do not exist: {stale}"


def test_imports_point_down_the_layers() -> None:
    upward = set()
    for module in MODULES:
        for line, target, _ in _imports(module):
            if target in LAYER_OF and LAYER_OF[target] > LAYER_OF[module]:
                upward.add(
                    f"{module}:{line} imports {target} "
                    f"({LAYERS[LAYER_OF[module]][0]} -> {LAYERS[LAYER_OF[target]][0]})"
                )
    assert not upward, "imports pointing up the layer table:\n" + "\n".join(sorted(upward))


def test_no_import_cycle() -> None:
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if state.get(target) is None and (cycle := visit(target)):
                return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if state.get(module) is None and (cycle := visit(module)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def _module_aliases(tree: ast.AST) -> set[str]:
    """Names bound to xentstream modules (``from xentstream import dask as xd``)."""
    aliases = set()
    for node in _nodes(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "xentstream":
            aliases |= {
                alias.asname or alias.name
                for alias in node.names
                if f"{node.module}.{alias.name}" in MODULES
            }
        elif isinstance(node, ast.Import):
            aliases |= {
                alias.asname
                for alias in node.names
                if alias.asname and alias.name.split(".")[0] == "xentstream"
            }
    return aliases


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_no_module_uses_another_modules_private_names() -> None:
    """``from xentstream.x import _name`` and ``x._name`` are what a public name (or a
    move of the code) should replace; private *modules* (``xentstream._errors``) are
    the package's own layers and may be imported for their public names."""
    found = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for line, target, names in _imports(module):
            found += [f"{module}:{line}: from {target} import {n}" for n in names if _private(n)]
        aliases = _module_aliases(tree)
        found += [
            f"{module}:{node.lineno}: {node.value.id}.{node.attr}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and _private(node.attr)
        ]
    assert not found, "private names of other modules:\n" + "\n".join(found)


def test_the_checks_see_what_they_check() -> None:
    """Guards against a parser that silently finds nothing: the table has the layers
    the page describes, and the graph the edges every reader knows are there."""
    assert len(LAYERS) >= 8 and LAYER_OF["xentstream._kernels.exact"] == 0
    assert LAYER_OF["xentstream.cli"] == len(LAYERS) - 1
    graph = _graph()
    assert "xentstream.feeders" in graph["xentstream.evaluation"]
    assert "xentstream._kernels.cuda" in graph["xentstream._kernels"]  # a lazy import
    assert "xentstream.dask" in graph["xentstream.cli"]

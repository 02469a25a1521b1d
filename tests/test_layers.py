"""The package's shape, checked: no import cycle, no private names across modules, layers.

The folders are the layers (docs/architecture.md). These tests read the source, so a change
that breaks the shape fails here rather than in a reviewer's head.
"""

from __future__ import annotations

import ast
from pathlib import Path

import sensormeter

ROOT = Path(sensormeter.__file__).parent
# Commands import the package when they run (a fast --help); that is their only exception.
LAZY_IMPORTS_ALLOWED = ("sensormeter.cli",)


def modules() -> dict[str, tuple[Path, bool]]:
    """Every module of the package: dotted name -> (file, is a package)."""
    found = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        parts = list(rel.parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        found[".".join(parts)] = (path, is_package)
    return found


def imports(name: str, path: Path, is_package: bool) -> list[tuple[str, str, bool]]:
    """(module imported, name imported, at module level) for each sensormeter import."""
    tree = ast.parse(path.read_text())
    top = set(map(id, tree.body))
    # Imports under a top-level "if TYPE_CHECKING:" only exist for type checkers.
    typing_only = {
        id(inner)
        for block in tree.body
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for inner in block.body
    }
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom) or id(node) in typing_only:
            continue
        base = name.split(".") if is_package else name.split(".")[:-1]
        if node.level:
            base = base[: len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        if target.startswith("sensormeter"):
            found.extend((target, alias.name, id(node) in top) for alias in node.names)
    return found


def graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports at module level."""
    mods = modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for name, (path, is_package) in mods.items():
        for target, imported, at_top in imports(name, path, is_package):
            if not at_top:
                continue
            full = f"{target}.{imported}"
            edges[name].add(full if full in mods else target)
    return edges


def test_there_is_no_import_cycle() -> None:
    """Following module-level imports never leads back to where it started."""
    edges = graph()
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in edges.get(node, ()):
            if nxt in path:
                cycles.append(" -> ".join(path[path.index(nxt) :] + [nxt]))
            elif nxt not in seen:
                seen.add(nxt)
                visit(nxt, path + [nxt])

    for start in edges:
        seen = {start}
        visit(start, [start])
    assert cycles == []


def test_no_module_imports_another_ones_private_name() -> None:
    """A name starting with _ stays inside its module."""
    private = [
        (name, target, imported)
        for name, (path, is_package) in modules().items()
        for target, imported, _ in imports(name, path, is_package)
        if imported.startswith("_") and imported != "__version__"
    ]
    assert private == []


def test_imports_are_at_module_level_outside_the_cli() -> None:
    """No import hidden in a function to dodge a cycle (the CLI's lazy commands excepted)."""
    hidden = [
        (name, target)
        for name, (path, is_package) in modules().items()
        if not name.startswith(LAZY_IMPORTS_ALLOWED)
        for target, _, at_top in imports(name, path, is_package)
        if not at_top
    ]
    assert hidden == []


def test_lower_layers_do_not_import_the_rq_side_or_the_edge() -> None:
    """Settings, usage, ledger, meters and the reporter know nothing of tasks, cli or emulator."""
    lower = ("usage", "ledger", "meters", "report", "reporter", "models", "db", "settings")
    upper = ("sensormeter.tasks", "sensormeter.cli", "sensormeter.emulator")
    edges = graph()
    leaks = [
        (name, target)
        for name, targets in edges.items()
        if name.split(".")[1:2] and name.split(".")[1] in lower
        for target in targets
        if target.startswith(upper)
    ]
    assert leaks == []

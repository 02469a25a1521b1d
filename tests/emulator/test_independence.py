"""The emulator stands apart: the core never imports it, and it imports nothing of the core."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import sensormeter.emulator

PACKAGE = Path(sensormeter.emulator.__file__).parent
CORE = [
    "sensormeter",
    "jobs",
    "reporter",
    "runtime",
    "tasks.schedule",
    "tasks.worker",
    "tasks.fanout",
    "tasks.catchup",
    "tasks.period_close",
    "tasks.recovery",
    "reconcile",
    "webhook",
]


def imports_of(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)]


def modules() -> list[tuple[str, ast.Module]]:
    return [(path.name, ast.parse(path.read_text())) for path in sorted(PACKAGE.glob("*.py"))]


def test_the_core_does_not_import_the_emulator() -> None:
    """Importing the library's core modules loads no sensormeter.emulator module."""
    modules = ", ".join(name if name == "sensormeter" else f"sensormeter.{name}" for name in CORE)
    code = (
        f"import sys, {modules}\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('sensormeter.emulator'))\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_emulator_imports_nothing_of_the_core() -> None:
    """Every import in sensormeter/emulator/ is the standard library or a sibling module."""
    assert len(modules()) > 1
    for name, tree in modules():
        for node in imports_of(tree):
            if isinstance(node, ast.ImportFrom):
                absolute = [node.module or ""] if node.level == 0 else []
                outside = node.level > 1 or any(m.startswith("sensormeter") for m in absolute)
            else:
                outside = any(alias.name.startswith("sensormeter") for alias in node.names)
            assert not outside, f"{name}:{node.lineno} imports from outside the emulator"


def test_the_emulator_imports_only_at_module_level() -> None:
    """No import hides inside a function or class (as one would to dodge a cycle)."""
    for name, tree in modules():
        for node in imports_of(tree):
            assert node in tree.body, f"{name}:{node.lineno} imports below module level"

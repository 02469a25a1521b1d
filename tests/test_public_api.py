"""The public API: the promised names import quietly, the deprecated ones warn and still work."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import sensormeter

ROOT = Path(__file__).resolve().parent.parent
DEPRECATED = {
    "Runtime": "sensormeter.runtime",
    "get_runtime": "sensormeter.runtime",
    "set_runtime": "sensormeter.runtime",
    "make_redis": "sensormeter.runtime",
    "make_queue": "sensormeter.tasks.queue",
}
PROMISED = [name for name in sensormeter.__all__ if name not in DEPRECATED]


def readme_public_names() -> set[str]:
    """Every `name` the README's Public API section lists."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Public API", 1)[1].split("\n## ", 1)[0]
    names = set(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", section))
    return {
        name
        for name in names
        if not name.startswith("_") and (name in DEPRECATED or hasattr(sensormeter, name))
    }


def test_deprecated_names_are_the_documented_ones() -> None:
    """The package's deprecation table is the one this test and the README describe."""
    assert sensormeter.DEPRECATED == DEPRECATED
    assert set(DEPRECATED) <= set(sensormeter.__all__)


def test_readme_lists_exactly_all() -> None:
    """The README's Public API names every name of __all__, and no other package name."""
    assert readme_public_names() == set(sensormeter.__all__)


@pytest.mark.parametrize("name", PROMISED)
def test_promised_name_imports_without_a_warning(name: str) -> None:
    """A promised name imports from sensormeter with no warning at all."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value = getattr(importlib.import_module("sensormeter"), name)
    assert value is not None


@pytest.mark.parametrize(("name", "module"), sorted(DEPRECATED.items()))
def test_deprecated_name_warns_and_still_works(name: str, module: str) -> None:
    """A deprecated name warns, naming its module, and is that module's very object."""
    with pytest.warns(DeprecationWarning, match=rf"sensormeter\.{name} .*{re.escape(module)}"):
        value = getattr(sensormeter, name)
    assert value is getattr(importlib.import_module(module), name)


def test_deprecated_names_are_not_in_the_namespace() -> None:
    """The deprecated names are not imported into the package (only reached on access)."""
    assert not set(DEPRECATED) & set(vars(sensormeter))


def test_unknown_name_is_an_attribute_error() -> None:
    """A name that was never exported is an AttributeError, as for any module."""
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        sensormeter.nope  # noqa: B018


def test_star_import_still_gives_the_deprecated_names() -> None:
    """`from sensormeter import *` keeps working in this release, warning for each such name."""
    code = (
        "import warnings\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    from sensormeter import *\n"
        "print(sorted({str(w.message).split()[0] for w in caught}))\n"
        "print(make_redis.__module__, make_queue.__module__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    warned, modules = done.stdout.splitlines()
    assert warned == str(sorted(f"sensormeter.{name}" for name in DEPRECATED))
    assert modules == "sensormeter.runtime sensormeter.tasks.queue"


def test_integrating_examples_import_no_deprecated_name() -> None:
    """Every import in docs/integrating.md's Python examples runs without a warning."""
    doc = (ROOT / "docs" / "integrating.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, re.S)
    imports = re.findall(r"^(?:from|import) [^\n(]+(?:\([^)]*\))?", "\n".join(blocks), re.M)
    assert any("sensormeter.runtime import" in line for line in imports)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        for statement in imports:
            exec(statement, {})

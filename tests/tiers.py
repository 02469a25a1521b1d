"""The test tiers: which tests are ``integration`` and which ``postgres``, found from the tests.

A test is ``integration`` when it reaches something outside the test process: Redis, a
database, the HTTP Stripe emulator or a subprocess. That is known from the test itself, never
from its file name: the fixtures it uses (their whole closure), the code of the test and of the
test package's own helpers and fixtures it refers to, and, for tests/faults/, where it lives.
A test parametrized on PostgreSQL (``database_url``'s ``postgres``) is ``postgres`` too.
tests/conftest.py applies :func:`mark_tiers` at collection, so ``pytest -m "not integration"``
is the fast tier and ``pytest -m "not postgres"`` everything but PostgreSQL.
"""

from __future__ import annotations

import builtins
import dis
import importlib.util
import inspect
import multiprocessing
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import redis

from sensormeter.emulator import StripeEmulator
from sensormeter.models import open_database
from sensormeter.runtime import Runtime

# Fixtures that reach Redis, a database, the HTTP emulator or processes (``item.fixturenames``
# is the closure, so fixtures built on these count too).
INTEGRATION_FIXTURES = frozenset(
    {
        "redis_conn",
        "database",
        "database_url",
        "emulator",
        "settings",
        "runtime",
        # tests/faults/conftest.py
        "redis_server",
        "fault_settings",
        "fault_db",
    }
)
FAULTS_DIR = Path(__file__).parent / "faults"  # every fault test runs the real pipeline
TESTS_PACKAGE = __name__.rpartition(".")[0] or __name__


def _plain(obj: object) -> object:
    """The function behind a bound, class or static method (they compare by it)."""
    return getattr(obj, "__func__", obj)


# What a test's code (or a helper of the test package it calls) may use without a fixture
# that is an outside service or process; compared by identity.
_OUTSIDE: dict[int, str] = {
    id(_plain(thing)): label
    for thing, label in [
        (subprocess.Popen, "subprocess"),
        (subprocess.run, "subprocess"),
        (subprocess.call, "subprocess"),
        (subprocess.check_call, "subprocess"),
        (subprocess.check_output, "subprocess"),
        (multiprocessing.Process, "subprocess"),
        (os.fork, "subprocess"),
        (StripeEmulator, "HTTP emulator"),
        (redis.Redis, "Redis"),
        (redis.from_url, "Redis"),
        (open_database, "database"),
        (Runtime.build, "runtime"),
    ]
}
_LOADS = {"LOAD_GLOBAL", "LOAD_NAME", "LOAD_DEREF", "LOAD_CLASSDEREF"}
_ATTRS = {"LOAD_ATTR", "LOAD_METHOD"}
_STORES = {"STORE_FAST", "STORE_NAME", "STORE_DEREF", "STORE_GLOBAL"}
_uses_cache: dict[tuple[int, int], frozenset[str]] = {}
# The objects of the cache's keys, kept alive: an id is unique only while its object lives, and
# a freed object's id given to a new one would answer for it from the cache (a flaky tier).
_cache_keep: list[object] = []


def _ours(obj: object) -> bool:
    """Whether ``obj`` is a function or class of the test package (worth following)."""
    module = getattr(obj, "__module__", None)
    if not isinstance(module, str):
        return False
    if module != TESTS_PACKAGE and not module.startswith(TESTS_PACKAGE + "."):
        return False
    return isinstance(obj, type) or hasattr(_plain(obj), "__code__")


def _attribute(obj: object, name: str) -> object:
    """``getattr`` without running properties or ``__getattr__`` hooks; None when absent."""
    try:
        return inspect.getattr_static(obj, name)
    except AttributeError:
        return None


def _imported(name: str, level: int, namespace: dict[str, object]) -> object:
    """The module an ``import`` in ``namespace`` names, when it is already imported."""
    if level:
        package = namespace.get("__package__")
        if not isinstance(package, str) or not package:
            return None
        name = importlib.util.resolve_name("." * level + name, package)
    return sys.modules.get(name)


def _scan(code: types.CodeType, namespace: dict[str, object], cls: type | None) -> set[str]:
    """Labels of the outside things one code object (and the code nested in it) refers to.

    Follows the chains of loads the bytecode makes (``redis.Redis.from_url``, ``self.helper``,
    a local ``import subprocess``) far enough to name the object each one ends on.
    """
    found: set[str] = set()
    local: dict[str, object] = {"self": cls, "cls": cls} if cls is not None else {}
    current: object = None  # the object the latest chain of loads ended on
    module: object = None  # the module of the latest ``import``, for its ``from`` names
    consts: list[object] = []  # the last two constants (an import's level and names)
    for ins in dis.get_instructions(code):
        name = ins.argval if isinstance(ins.argval, str) else ""
        if ins.opname in _LOADS:
            current = namespace.get(name, getattr(builtins, name, None))
        elif ins.opname == "LOAD_FAST":
            current = local.get(name)
            if cls is not None and name in ("self", "cls"):
                continue  # the test's own class, not a use of all its methods
        elif ins.opname in _ATTRS:
            current = None if current is None else _attribute(current, name)
        elif ins.opname == "IMPORT_NAME":
            level = consts[0] if len(consts) == 2 and isinstance(consts[0], int) else 0
            current = module = _imported(name, level, namespace)
        elif ins.opname == "IMPORT_FROM":
            current = None if module is None else _attribute(module, name)
        elif ins.opname in _STORES:
            local[name] = current
            continue
        else:
            consts = [*consts[-1:], ins.argval] if ins.opname == "LOAD_CONST" else []
            current = None
            continue
        found |= _refers(current)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            found |= _scan(const, namespace, cls)
    return found


def _refers(obj: object) -> set[str]:
    """The label of ``obj`` when it is outside; what it reaches when it is the test package's."""
    if obj is None:
        return set()
    label = _OUTSIDE.get(id(_plain(obj)))
    if label is not None:
        return {label}
    return set(outside_uses(obj)) if _ours(obj) else set()


def outside_uses(obj: object, cls: type | None = None) -> frozenset[str]:
    """What outside services or processes a test function, fixture or helper class reaches."""
    obj = _plain(getattr(getattr(obj, "hypothesis", None), "inner_test", obj))
    key = (id(obj), id(cls))
    if key in _uses_cache:
        return _uses_cache[key]
    _uses_cache[key] = frozenset()  # a helper that calls itself stops here
    _cache_keep.append((obj, cls))
    found: set[str] = set()
    if isinstance(obj, type):
        for member in vars(obj).values():
            if _ours(_plain(member)):
                found |= outside_uses(member, obj)
    else:
        code = getattr(obj, "__code__", None)
        namespace = getattr(obj, "__globals__", None)
        if isinstance(code, types.CodeType) and isinstance(namespace, dict):
            found = _scan(code, namespace, cls)
    _uses_cache[key] = frozenset(found)
    return _uses_cache[key]


def tier_markers(
    path: Path,
    fixturenames: list[str] | tuple[str, ...],
    params: dict[str, object],
    code: list[tuple[object, type | None]],
) -> set[str]:
    """The tier markers of one test: ``integration``, and ``postgres`` on PostgreSQL."""
    markers: set[str] = set()
    if (
        INTEGRATION_FIXTURES.intersection(fixturenames)
        or path.is_relative_to(FAULTS_DIR)
        or any(outside_uses(obj, cls) for obj, cls in code)
    ):
        markers.add("integration")
    if params.get("database_url") == "postgres":
        markers |= {"integration", "postgres"}
    return markers


def _item_code(item: pytest.Item) -> list[tuple[object, type | None]]:
    """The test function and the test package's own fixtures it uses, with the test class."""
    cls = getattr(item, "cls", None)
    code: list[tuple[object, type | None]] = []
    function = getattr(item, "function", None)
    if function is not None:
        code.append((function, cls))
    definitions = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
    for name in getattr(item, "fixturenames", ()):
        for fixturedef in definitions.get(name, ()):
            if _ours(fixturedef.func):
                code.append((fixturedef.func, cls))
    return code


def mark_tiers(items: list[pytest.Item]) -> None:
    """Mark each test ``integration`` and/or ``postgres`` by what it reaches."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        params = dict(callspec.params) if callspec is not None else {}
        found = tier_markers(
            Path(item.path), getattr(item, "fixturenames", ()), params, _item_code(item)
        )
        for name in sorted(found):
            if item.get_closest_marker(name) is None:
                item.add_marker(name)

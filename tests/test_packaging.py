"""What a production install pulls in: bounded versions, and nothing only the tests need."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

SETUP_CFG = Path(__file__).resolve().parent.parent / "setup.cfg"
# Libraries only tests, examples or development use: never in a production install.
DEVELOPMENT_ONLY = {
    "pytest",
    "pytest-timeout",
    "hypothesis",
    "ruff",
    "mypy",
    "flask",
    "django",
    "fastapi",
    "httpx",
    "uvicorn",
    "honcho",
}


def _requirements(section: str, key: str) -> list[str]:
    config = configparser.ConfigParser()
    config.read(SETUP_CFG)
    return [line.strip() for line in config[section][key].splitlines() if line.strip()]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower()


def test_every_runtime_dependency_has_an_upper_bound_on_its_major_version() -> None:
    """A new major release of a library sensormeter relies on must not arrive unasked."""
    unbounded = [r for r in _requirements("options", "install_requires") if "<" not in r]
    assert unbounded == []


def test_a_production_install_has_nothing_only_the_tests_need() -> None:
    """Test runners, linters and example frameworks stay in the extras."""
    names = {_name(r) for r in _requirements("options", "install_requires")}
    assert names & DEVELOPMENT_ONLY == set()


def test_every_extra_is_bounded_too() -> None:
    """The extras (postgres, dev, ...) carry upper bounds as well."""
    config = configparser.ConfigParser()
    config.read(SETUP_CFG)
    unbounded = [
        f"{extra}: {r}"
        for extra in config["options.extras_require"]
        for r in _requirements("options.extras_require", extra)
        if "<" not in r and _name(r) != "sensormeter"  # dev pulls in the examples extra
    ]
    assert unbounded == []

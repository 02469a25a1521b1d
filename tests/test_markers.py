"""The test tiers: tests/tiers.py marks what reaches outside services, and only that."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from . import tiers
from .tiers import FAULTS_DIR, INTEGRATION_FIXTURES, outside_uses, tier_markers

# Compiled at test time, so that the code of these samples is no part of the tests below (the
# classifier would follow it from them and put them in the integration tier).
SAMPLES = """
def pure(values):
    return sorted(values)

def runs_a_process():
    return subprocess.run(["true"])

def starts_the_emulator():
    with StripeEmulator() as emulator:
        return emulator.base_url

def calls_a_helper():
    return starts_the_emulator()

def imports_inside():
    import subprocess as sp
    return sp.Popen(["true"])

def builds_a_server():
    return Server()

def counts_down(n):
    return counts_down(n - 1) if n else 0

class Server:
    def start(self):
        subprocess.Popen(["redis-server"])

class TestSample:
    def connect(self):
        return redis.Redis.from_url("redis://127.0.0.1:1/0")

    def test_through_a_method(self):
        return self.connect()

    def test_pure(self):
        return self.counts_down(3)

    counts_down = staticmethod(counts_down)
"""


def samples() -> dict[str, object]:
    """The samples, as if they were a module of the test package."""
    package = __name__.rpartition(".")[0]
    # The outside things by name: naming them here would make the tests that build the
    # samples look like users of them.
    namespace = {name: getattr(tiers, name) for name in ("subprocess", "redis", "StripeEmulator")}
    namespace.update({"__name__": f"{package}.tier_samples", "__package__": package})
    exec(compile(SAMPLES, "<tier samples>", "exec"), namespace)
    return namespace


class TestOutsideUses:
    def test_pure_code_reaches_nothing(self) -> None:
        """A function that only computes, or recurses, reaches nothing outside."""
        found = samples()
        assert outside_uses(found["pure"]) == set()
        assert outside_uses(found["counts_down"]) == set()

    @pytest.mark.parametrize(
        ("name", "label"),
        [
            ("runs_a_process", "subprocess"),
            ("starts_the_emulator", "HTTP emulator"),
            ("calls_a_helper", "HTTP emulator"),
            ("imports_inside", "subprocess"),
            ("builds_a_server", "subprocess"),
        ],
    )
    def test_outside_uses_are_found(self, name: str, label: str) -> None:
        """Processes and the emulator are found directly, via helpers, local imports, classes."""
        assert outside_uses(samples()[name]) == {label}

    def test_methods_follow_self(self) -> None:
        """A test method reaches what the helper methods it calls on ``self`` reach, only that."""
        cls = samples()["TestSample"]
        assert isinstance(cls, type)
        assert outside_uses(vars(cls)["test_through_a_method"], cls) == {"Redis"}
        assert outside_uses(vars(cls)["test_pure"], cls) == set()


def code_of(name: str) -> list[tuple[object, type | None]]:
    """One sample as the test code of an item."""
    return [(samples()[name], None)]


class TestTierMarkers:
    here = Path(__file__)

    def test_pure_test_stays_fast(self) -> None:
        """No outside fixture, no outside code, outside tests/faults/: no tier marker."""
        assert tier_markers(self.here, ["tmp_path", "monkeypatch"], {}, code_of("pure")) == set()

    @pytest.mark.parametrize("fixture", sorted(INTEGRATION_FIXTURES))
    def test_outside_fixtures_mean_integration(self, fixture: str) -> None:
        """Each fixture that reaches a service or a process makes the test ``integration``."""
        assert tier_markers(self.here, ["tmp_path", fixture], {}, []) == {"integration"}

    def test_outside_code_means_integration(self) -> None:
        """A test whose code starts a process is ``integration`` without any fixture."""
        assert tier_markers(self.here, [], {}, code_of("runs_a_process")) == {"integration"}

    def test_fault_suite_is_integration(self) -> None:
        """Every test under tests/faults/ is ``integration``, whatever it uses."""
        assert tier_markers(FAULTS_DIR / "test_new.py", [], {}, []) == {"integration"}

    @pytest.mark.parametrize(
        ("backend", "expected"),
        [("sqlite", {"integration"}), ("postgres", {"integration", "postgres"})],
    )
    def test_postgres_half_is_marked(self, backend: str, expected: set[str]) -> None:
        """The PostgreSQL half of ``database_url`` is ``postgres`` too; the SQLite half is not."""
        fixtures = ["database_url", "database"]
        assert tier_markers(self.here, fixtures, {"database_url": backend}, []) == expected


def fixtures_per_test(*args: str) -> tuple[set[Path], set[str]]:
    """The test files and fixture names ``pytest --fixtures-per-test ARGS`` lists."""
    tests_dir = Path(__file__).parent
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--fixtures-per-test", "-q", "-p", "no:cacheprovider"]
        + [*args, str(tests_dir)],
        cwd=tests_dir.parent,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    located = re.findall(r"^-+ \((\S+?):\d+\) -+$", done.stdout, re.MULTILINE)
    files = {(tests_dir.parent / name).resolve() for name in located}
    fixtures = set(re.findall(r"^(\w+) -- ", done.stdout, re.MULTILINE))
    return files, fixtures


def test_fast_tier_reaches_no_service() -> None:
    """``-m "not integration"`` collects no test that uses an outside fixture or is a fault test."""
    files, fixtures = fixtures_per_test("-m", "not integration")
    assert files, "the fast tier collected nothing"
    assert not fixtures & INTEGRATION_FIXTURES
    assert not [f for f in files if f.is_relative_to(FAULTS_DIR.resolve())]

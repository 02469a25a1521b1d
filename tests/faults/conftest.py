"""The fault-injection harness: a private Redis server, worker processes, billing invariants.

Each fault test runs the real pipeline (Redis, a database, `sensormeter worker` processes, the
HTTP emulator), injects one fault, lets the system recover, and then checks the invariants
with :func:`assert_billed_exactly_once`.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from sensormeter.emulator import StripeEmulator
from sensormeter.hours import parse_hour
from sensormeter.ledger import hourly_identifier
from sensormeter.models import MeterReport
from sensormeter.settings import Settings

from ..conftest import SENSORMETER, cli_env, unavailable

# Each fault test is bounded: a hang fails that test (with its stacks), never the whole run.
FAULT_TEST_TIMEOUT_SECONDS = 300


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give every test under tests/faults/ a hard time limit."""
    for item in items:
        if "faults" in item.nodeid.split("::")[0].split("/"):
            item.add_marker(pytest.mark.timeout(FAULT_TEST_TIMEOUT_SECONDS))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A redis-server of the test's own, on a free port, that the test may kill and restart."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url)
        assert wait_for(lambda: _pings(client), 10), "redis-server did not start"

    def kill(self) -> None:
        """SIGKILL: the data is gone (no persistence), like a restarted Heroku Redis."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private Redis server (fault tests restart it; the shared one must not be touched)."""
    if shutil.which("redis-server") is None:
        unavailable("redis-server", "not installed")
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.kill()


@pytest.fixture
def fault_settings(redis_server: RedisServer, emulator: StripeEmulator, tmp_path: Path) -> Settings:
    """Settings for a fault run: private Redis, SQLite file, short retries."""
    return Settings(
        redis_url=redis_server.url,
        database_url=f"sqlite:///{tmp_path / 'faults.db'}",
        stripe_api_key="sk_test_faults",
        stripe_api_base=emulator.base_url,
        queue_name="sensormeter-faults",
        max_retries=4,
        retry_backoff_seconds=1,
        stripe_timeout_seconds=2,
        chunk_size=5,
        max_in_flight=4,
    )


def wait_for(predicate: Callable[[], object], timeout: float, every: float = 0.1) -> bool:
    """Poll until ``predicate()`` is truthy or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return False


def run_cli(
    settings: Settings, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``sensormeter ARGS`` to completion with the settings' environment."""
    return subprocess.run(
        [*SENSORMETER, *args],
        env=cli_env(settings),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_cli(settings: Settings, *args: str) -> subprocess.Popen[bytes]:
    """Start ``sensormeter ARGS`` in its own process group (a "dyno")."""
    # Logs go to a file: an unread pipe fills up and blocks the workers writing to it.
    log = tempfile.TemporaryFile()
    process = subprocess.Popen(
        [*SENSORMETER, *args],
        env=cli_env(settings),
        start_new_session=True,
        stdout=log,
        stderr=log,
    )
    process.log = log  # type: ignore[attr-defined]
    return process


def log_tail(process: subprocess.Popen[bytes], size: int = 4000) -> str:
    """The end of what a process started by :func:`start_cli` wrote."""
    fd = process.log.fileno()  # type: ignore[attr-defined]
    # pread, not seek+read: the child shares the file offset, and moving it would make the
    # child write over what it wrote before.
    length = os.fstat(fd).st_size
    start = max(0, length - size)
    return os.pread(fd, length - start, start).decode(errors="replace")


def stop_group(
    process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30
) -> int:
    """Signal every process of the group, wait, and SIGKILL what is left after ``timeout``."""
    try:
        os.killpg(process.pid, sig)
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        stacks = _stacks(process.pid)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        tail = log_tail(process, 12000) if hasattr(process, "log") else ""
        raise AssertionError(
            f"still running {timeout} s after signal {sig}:\n{tail}\n{stacks}"
        ) from None
    except ProcessLookupError:
        return process.wait()


def _stacks(group: int) -> str:
    """Python stacks of a hung process group, when py-spy is installed (a debugging aid)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return ""
    pids = subprocess.run(["pgrep", "-g", str(group)], capture_output=True, text=True).stdout
    dumps = []
    for pid in pids.split():
        dump = subprocess.run([spy, "dump", "--pid", pid], capture_output=True, text=True)
        dumps.append(f"--- {pid}\n{dump.stdout}{dump.stderr}")
    return "\n".join(dumps)


def current_hour() -> str:
    return f"{datetime.now(UTC):%Y-%m-%dT%H}"


def assert_billed_exactly_once(
    emulator: StripeEmulator,
    customers: dict[str, str],
    hour: str,
    event_name: str = "active_sensors",
) -> None:
    """The invariants every fault test ends on, for one hour.

    - every billable organization has exactly one delivered hourly event for the hour, under
      the hour's identifier, for its customer, with a timestamp inside the hour;
    - no other hourly identifier for that organization and hour reached Stripe;
    - the ledger has one row per organization for the hour, all `sent`, none pending.
    """
    start = parse_hour(hour).replace(tzinfo=UTC)
    end = start + timedelta(hours=1)
    expected = {org: hourly_identifier(org, event_name, parse_hour(hour)) for org in customers}
    events = [e for e in emulator.events() if e.identifier.endswith(hour)]
    by_identifier: dict[str, list[object]] = {}
    for event in events:
        by_identifier.setdefault(event.identifier, []).append(event)
    assert sorted(by_identifier) == sorted(expected.values()), "hourly identifiers differ"
    for org, identifier in expected.items():
        [event] = by_identifier[identifier]  # the emulator keeps an identifier once
        assert event.customer == customers[org]  # type: ignore[attr-defined]
        moment = datetime.fromtimestamp(event.timestamp, UTC)  # type: ignore[attr-defined]
        assert start <= moment < end, f"{org}: timestamp {moment} outside {hour}"
    rows = list(MeterReport.select().where(MeterReport.period_hour == parse_hour(hour)))
    assert sorted(r.organization_id for r in rows) == sorted(customers)
    assert {r.status for r in rows} == {"sent"}, [(r.organization_id, r.status) for r in rows]
    assert MeterReport.select().where(MeterReport.status == "pending").count() == 0


def assert_period_closed(
    emulator: StripeEmulator,
    customers: dict[str, str],
    period_ends: dict[str, datetime],
    counts: dict[str, int],
    event_name: str = "active_sensors",
) -> None:
    """The period-close invariant, for each organization's period end (naive UTC).

    - the last event at or before the end (all of them, if several share its timestamp)
      carries the count at the end, and is stamped inside the period (before the end);
    - exactly one close report of that end reached Stripe, for the organization's customer;
    - its ledger row is a `period_close` row, `sent`.
    """
    from sensormeter.ledger import on_demand_identifier
    from sensormeter.report import close_request_id

    events = emulator.events()
    for org, end in period_ends.items():
        end_ts = end.replace(tzinfo=UTC).timestamp()
        mine = [e for e in events if e.customer == customers[org] and e.timestamp <= end_ts]
        assert mine, f"{org}: no event at or before its period end {end}"
        last = max(e.timestamp for e in mine)
        assert last < end_ts, f"{org}: the last event of the period is stamped at its end"
        values = {e.value for e in mine if e.timestamp == last}
        assert values == {counts[org]}, f"{org}: last value {values} at {end}, not {counts[org]}"
        identifier = on_demand_identifier(org, event_name, close_request_id(end))
        closes = [e for e in events if e.identifier == identifier]
        assert [e.customer for e in closes] == [customers[org]], f"{org}: close report {closes}"
        row = MeterReport.get(MeterReport.identifier == identifier)
        assert (row.kind, row.status) == (MeterReport.PERIOD_CLOSE, MeterReport.SENT)


@pytest.fixture
def fault_db(fault_settings: Settings) -> Iterator[object]:
    """The fault run's database, with fresh tables, opened in the test process too."""
    from sensormeter.models import create_tables, open_database

    db = open_database(fault_settings.database_url)
    create_tables(db)
    yield db
    db.close()


def seed(count: int, prefix: str = "org") -> dict[str, str]:
    """``count`` billable organizations with 1-5 sensors; returns organization -> customer."""
    from ..factories import make_org

    customers = {}
    for i in range(count):
        org = f"{prefix}{i:03d}"
        make_org(org, active=1 + i % 5)
        customers[org] = f"cus_{org}"
    make_org(f"{prefix}-canceled", status="canceled", active=3)  # never billed
    return customers

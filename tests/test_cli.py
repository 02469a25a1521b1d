"""The ``sensormeter`` command, run as a subprocess: its commands and its one-line errors."""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import peewee
import pytest
import redis

from sensormeter.models import MeterReport, utcnow
from sensormeter.settings import Settings
from sensormeter.tasks.queue import make_queue
from sensormeter.tasks.report import enqueue_sensor_report

from .conftest import SENSORMETER, TEST_QUEUE, cli_env
from .factories import make_org

# Tests whose subject is not the database run once, on SQLite.
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

UNREACHABLE_REDIS = "redis://:s3cret@127.0.0.1:1/0"
UNREACHABLE_POSTGRES = "postgresql://u:pw123@127.0.0.1:1/x"
COMMANDS = {
    "init-db",
    "report-all",
    "report",
    "worker",
    "scheduler",
    "status",
    "stripe-emulator",
    "demo",
}


def sensormeter(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``sensormeter ARGS`` with exactly ``env`` and capture what it prints."""
    return subprocess.run(
        [*SENSORMETER, *args], env=env, capture_output=True, text=True, timeout=60
    )


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    """Check the process failed with a single line on stderr and no traceback; return it."""
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


@sqlite_only
class TestConfigurationErrors:
    @pytest.mark.parametrize(
        ("variable", "value", "command"),
        [
            ("SENSORMETER_CHUNK_SIZE", "abc", ["report-all"]),
            ("SENSORMETER_BILLABLE_STATUSES", "active,bogus", ["worker", "--burst"]),
            ("REDIS_URL", "http://x", ["status"]),
            ("DATABASE_URL", "mysql://x", ["init-db"]),
            ("STRIPE_API_KEY", "nope", ["report", "acme"]),
            ("SENSORMETER_MAX_RETRIES", "-1", ["scheduler", "--burst"]),
        ],
    )
    def test_bad_value_is_one_line_naming_the_variable(
        self, settings: Settings, variable: str, value: str, command: list[str]
    ) -> None:
        """A malformed environment value stops the command with one line that names it."""
        done = sensormeter(cli_env(settings, **{variable: value}), *command)
        assert variable in one_error_line(done)
        assert done.stdout == ""

    def test_worker_without_stripe_key_names_it_and_takes_no_job(
        self, settings: Settings, redis_conn: redis.Redis
    ) -> None:
        """``worker --burst`` without STRIPE_API_KEY refuses to start; the queued job stays."""
        enqueue_sensor_report("acme", settings=settings, connection=redis_conn)
        env = cli_env(settings)
        del env["STRIPE_API_KEY"]
        assert "STRIPE_API_KEY" in one_error_line(sensormeter(env, "worker", "--burst"))
        assert make_queue(settings, redis_conn).count == 1


@sqlite_only
class TestUnreachableServices:
    @pytest.mark.parametrize(
        "command",
        [["report-all"], ["report", "acme"], ["worker", "--burst"], ["scheduler", "--burst"]],
    )
    def test_redis_down_is_one_line_without_the_password(
        self, settings: Settings, database: peewee.Database, command: list[str]
    ) -> None:
        """Unreachable Redis: one line saying so, with the address but never the password."""
        done = sensormeter(cli_env(settings, REDIS_URL=UNREACHABLE_REDIS), *command)
        line = one_error_line(done)
        assert "Redis" in line and "127.0.0.1:1" in line
        assert "s3cret" not in done.stdout + done.stderr

    def test_status_with_redis_down(self, settings: Settings, database: peewee.Database) -> None:
        """``status`` shows the ledger, then one line for the Redis it cannot reach."""
        done = sensormeter(cli_env(settings, REDIS_URL=UNREACHABLE_REDIS), "status")
        assert "Redis" in one_error_line(done)
        assert done.stdout.startswith("ledger: ")
        assert "s3cret" not in done.stdout + done.stderr

    @pytest.mark.parametrize(
        "command",
        [["init-db"], ["status"], ["worker", "--burst"], ["scheduler"], ["report", "acme"]],
    )
    def test_database_down_is_one_line_without_the_password(
        self, settings: Settings, redis_conn: redis.Redis, command: list[str]
    ) -> None:
        """Unreachable PostgreSQL: one line naming the database, never its password."""
        done = sensormeter(cli_env(settings, DATABASE_URL=UNREACHABLE_POSTGRES), *command)
        line = one_error_line(done)
        assert "database" in line and "127.0.0.1:1/x" in line
        assert "pw123" not in done.stdout + done.stderr

    def test_scheduler_refuses_a_missing_database_and_registers_nothing(
        self, settings: Settings, redis_conn: redis.Redis, tmp_path: Path
    ) -> None:
        """A mistyped SQLite path stops the scheduler at start, as it stops the worker."""
        missing = f"sqlite:///{tmp_path}/typo.db"
        done = sensormeter(cli_env(settings, DATABASE_URL=missing), "scheduler")
        assert "typo.db" in one_error_line(done)
        assert redis_conn.keys("rq:scheduler*") == []
        assert not (tmp_path / "typo.db").exists()

    def test_status_before_init_db_says_to_run_it(self, settings: Settings) -> None:
        """``status`` on a database without sensormeter's tables points to ``init-db``."""
        assert "sensormeter init-db" in one_error_line(sensormeter(cli_env(settings), "status"))


@sqlite_only
class TestReportCommand:
    @pytest.mark.parametrize(
        ("organization_id", "problem"),
        [("", "must not be empty"), ("bad id/with space", "use 1-64 letters")],
    )
    def test_bad_organization_id_is_refused_and_nothing_is_queued(
        self, settings: Settings, redis_conn: redis.Redis, organization_id: str, problem: str
    ) -> None:
        """An empty or malformed id is named in the error, and nothing reaches Redis."""
        line = one_error_line(sensormeter(cli_env(settings), "report", organization_id))
        assert f"invalid organization id {organization_id!r}" in line and problem in line
        assert make_queue(settings, redis_conn).count == 0
        assert redis_conn.keys("sensormeter:*") == []

    def test_report_queues_one_job_and_prints_its_id(
        self, settings: Settings, database: peewee.Database, redis_conn: redis.Redis
    ) -> None:
        """``report ORG`` queues a job on the configured queue and prints its id."""
        make_org("acme", active=2)
        done = sensormeter(cli_env(settings), "report", "acme")
        assert done.returncode == 0, done.stderr
        [job] = make_queue(settings, redis_conn).get_jobs()
        assert done.stdout.strip() == f"queued {job.id} on {TEST_QUEUE}"
        assert job.func_name == "sensormeter.tasks.report.process_meter_report"
        assert list(job.args) == [["acme"]]

    @pytest.mark.parametrize(
        ("organization", "reason"),
        [
            ("ghost", "unknown organization"),
            ("late", "subscription status not billable: past_due"),
            ("nocus", "no Stripe customer"),
        ],
    )
    def test_a_non_billable_organization_is_refused_with_its_reason(
        self,
        settings: Settings,
        database: peewee.Database,
        redis_conn: redis.Redis,
        organization: str,
        reason: str,
    ) -> None:
        """``report ORG`` for an organization not billable now says why and queues nothing."""
        make_org("late", status="past_due", active=3)
        make_org("nocus", customer=None, active=3)
        done = sensormeter(cli_env(settings), "report", organization)
        line = one_error_line(done)
        assert done.returncode == 1 and done.stdout == ""
        assert f"{organization} is not billable now" in line and reason in line
        assert "nothing queued" in line
        assert make_queue(settings, redis_conn).count == 0


@sqlite_only
class TestReportAllCommand:
    def test_malformed_hour_is_a_usage_error_naming_the_option(
        self, settings: Settings, redis_conn: redis.Redis
    ) -> None:
        """``report-all --hour 2026-13-99`` is one error line about --hour; nothing is queued."""
        done = sensormeter(cli_env(settings), "report-all", "--hour", "2026-13-99")
        line = one_error_line(done)
        assert done.returncode == 2
        assert "Invalid value for --hour" in line and "2026-13-99" in line
        assert make_queue(settings, redis_conn).count == 0

    def test_hour_is_passed_to_the_fanout(
        self, settings: Settings, redis_conn: redis.Redis
    ) -> None:
        """``report-all --hour H`` queues one fan-out job for hour H."""
        hour = f"{datetime.now(UTC) - timedelta(hours=3):%Y-%m-%dT%H}"
        done = sensormeter(cli_env(settings), "report-all", "--hour", hour)
        assert done.returncode == 0, done.stderr
        [job] = make_queue(settings, redis_conn).get_jobs()
        assert done.stdout.strip() == f"queued {job.id} on {TEST_QUEUE}"
        assert job.func_name == "sensormeter.tasks.fanout.report_all_sensor_counts"
        assert job.kwargs == {"hour": hour}


@sqlite_only
class TestInitDb:
    def test_creates_the_tables_then_says_they_exist(
        self, settings: Settings, tmp_path: Path
    ) -> None:
        """On a fresh SQLite file the first run creates the tables; the second leaves them."""
        path = tmp_path / "fresh.db"
        env = cli_env(settings, DATABASE_URL=f"sqlite:///{path}")
        first = sensormeter(env, "init-db")
        assert first.returncode == 0, first.stderr
        assert first.stdout.startswith("created tables ")
        tables = {
            "organizations",
            "subscriptions",
            "sensors",
            "meter_reports",
            "sensormeter_schema_version",
            "sensormeter_billable_history",
            "sensormeter_quarantine",
        }
        assert all(table in first.stdout for table in tables)
        assert set(peewee.SqliteDatabase(str(path)).get_tables()) == tables
        second = sensormeter(env, "init-db")
        assert second.returncode == 0, second.stderr
        assert second.stdout.startswith("tables exist in ")


def add_ledger_row(organization_id: str, status: str, error: str | None = None) -> None:
    """A ledger row in ``status`` (sent rows get a sent_at, failed/rejected ones an error)."""
    MeterReport.create(
        organization_id=organization_id,
        event_name="active_sensors",
        value=7,
        identifier=f"active_sensors-{organization_id}-2026-11-29T04",
        stripe_customer_id=f"cus_{organization_id}",
        measured_at=utcnow(),
        status=status,
        last_error=error,
        sent_at=utcnow() if status == MeterReport.SENT else None,
    )


class TestStatus:
    def test_prints_ledger_counts_queue_and_problems(
        self, settings: Settings, database: peewee.Database, redis_conn: redis.Redis
    ) -> None:
        """``status`` prints the count of every ledger status, the queue, and the problem rows."""
        add_ledger_row("acme", MeterReport.SENT)
        add_ledger_row("globex", MeterReport.SENT)
        add_ledger_row("initech", MeterReport.FAILED, "APIError: Injected error.")
        add_ledger_row("umbrella", MeterReport.REJECTED, "Invalid payload[value].")
        enqueue_sensor_report("acme", settings=settings, connection=redis_conn)
        done = sensormeter(cli_env(settings), "status")
        assert done.returncode == 1, done.stderr  # failed rows, nothing scheduled: problems
        lines = done.stdout.splitlines()
        [ledger] = [line for line in lines if line.startswith("ledger: ")]
        counts = dict(item.split(" ") for item in ledger.removeprefix("ledger: ").split(", "))
        assert counts == {
            "pending": "0",
            "sent": "2",
            "failed": "1",
            "rejected": "1",
            "held": "0",
            "quarantined": "0",
            "superseded": "0",
        }
        assert f"queue {TEST_QUEUE}: 1 queued, 0 waiting for retry" in lines
        assert any(line.startswith("next hourly run: not scheduled") for line in lines)
        problems = [line.strip() for line in lines if line.startswith("  ")]
        assert sorted(problems) == [
            "failed: initech active_sensors-initech-2026-11-29T04: APIError: Injected error.",
            "rejected: umbrella active_sensors-umbrella-2026-11-29T04: Invalid payload[value].",
        ]


class TestHelp:
    def test_group_help_lists_every_command(self) -> None:
        """``sensormeter --help`` lists every command."""
        done = sensormeter(dict(os.environ), "--help")
        assert done.returncode == 0, done.stderr
        section = done.stdout.split("Commands:", 1)[1]
        listed = {line.split()[0] for line in section.splitlines() if line.strip()}
        assert COMMANDS <= listed

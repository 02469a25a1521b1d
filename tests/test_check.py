"""``sensormeter check`` (0 healthy, 1 a line per problem, 2 unreachable) and ``status --json``."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import peewee
import pytest
import redis

from sensormeter import ledger
from sensormeter.hours import hour_start
from sensormeter.models import MeterReport, utcnow
from sensormeter.settings import Settings
from sensormeter.tasks.recovery import stale_after
from sensormeter.tasks.schedule import make_scheduler, register_all, sweep_job_id

from .conftest import TEST_QUEUE, cli_env
from .factories import make_org
from .test_cli import UNREACHABLE_POSTGRES, UNREACHABLE_REDIS, sensormeter

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
OK = "sensormeter.check.ok: "
FAILED = "sensormeter.check.failed "


def hourly_row(org: str, status: str, measured: datetime, updated: datetime | None = None) -> None:
    """An hourly ledger row of the hour ``measured`` falls in."""
    MeterReport.create(
        organization_id=org,
        event_name="active_sensors",
        value=2,
        identifier=ledger.hourly_identifier(org, "active_sensors", hour_start(measured)),
        kind=MeterReport.HOURLY,
        period_hour=hour_start(measured),
        stripe_customer_id=f"cus_{org}",
        measured_at=measured,
        status=status,
        created_at=measured,
        updated_at=updated or measured,
        sent_at=measured if status == MeterReport.SENT else None,
    )


def healthy(redis_conn: redis.Redis) -> None:
    """A billable organization reported 5 minutes ago, and the three jobs registered."""
    make_org("acme")
    hourly_row("acme", MeterReport.SENT, utcnow() - timedelta(minutes=5))
    register_all(make_scheduler(TEST_QUEUE, redis_conn), TEST_QUEUE)


def codes(stdout: str) -> list[str]:
    """The problem codes of check's lines (each line must be a check line)."""
    lines = stdout.splitlines()
    assert all(line.startswith(FAILED) for line in lines), stdout
    return [line.removeprefix(FAILED).split(":", 1)[0] for line in lines]


class TestCheck:
    def test_healthy_is_exit_0_and_one_line(
        self, settings: Settings, database: peewee.Database, redis_conn: redis.Redis
    ) -> None:
        """Registered, reported within 65 minutes, nothing failed or abandoned: one ok line."""
        healthy(redis_conn)
        done = sensormeter(cli_env(settings), "check")
        assert done.returncode == 0, done.stdout + done.stderr
        [line] = done.stdout.splitlines()
        assert line.startswith(OK) and TEST_QUEUE in line

    def test_no_billable_organization_needs_no_hourly_report(
        self, settings: Settings, database: peewee.Database, redis_conn: redis.Redis
    ) -> None:
        """Nothing delivered is fine while no organization is billable (a new deployment)."""
        register_all(make_scheduler(TEST_QUEUE, redis_conn), TEST_QUEUE)
        make_org("trial", status="canceled")
        done = sensormeter(cli_env(settings), "check")
        assert done.returncode == 0, done.stdout
        assert done.stdout.startswith(OK)

    def test_each_problem_is_one_line_and_exit_1(
        self, settings: Settings, database: peewee.Database, redis_conn: redis.Redis
    ) -> None:
        """A registration gone, a failed row, an abandoned pending row, no recent hourly report."""
        scheduler = make_scheduler(TEST_QUEUE, redis_conn)
        register_all(scheduler, TEST_QUEUE)
        scheduler.cancel(sweep_job_id(TEST_QUEUE))
        make_org("acme")
        now = utcnow()
        hourly_row("acme", MeterReport.SENT, now - timedelta(minutes=66))
        hourly_row("acme", MeterReport.FAILED, now - timedelta(hours=3))
        lost = now - stale_after(settings) - timedelta(minutes=1)
        hourly_row("lost", MeterReport.PENDING, lost - timedelta(hours=3), updated=lost)
        # Pending, but touched recently enough that a live job may still own it: no problem.
        hourly_row("live", MeterReport.PENDING, now - timedelta(hours=5), updated=now)
        done = sensormeter(cli_env(settings), "check")
        assert done.returncode == 1, done.stdout + done.stderr
        assert codes(done.stdout) == [
            "not_registered",
            "failed_reports",
            "abandoned_pending",
            "no_recent_hourly_report",
        ]
        assert f"sensormeter-sweep-{TEST_QUEUE}" in done.stdout
        assert "1 failed report(s)" in done.stdout and "1 pending report(s)" in done.stdout

    @sqlite_only
    def test_redis_out_of_reach_is_exit_2(
        self, settings: Settings, database: peewee.Database
    ) -> None:
        """REDIS_URL at a closed port: exit 2, one line naming Redis, no password."""
        done = sensormeter(cli_env(settings, REDIS_URL=UNREACHABLE_REDIS), "check")
        assert done.returncode == 2, done.stdout + done.stderr
        assert codes(done.stdout) == ["redis_unreachable"]
        assert "127.0.0.1:1" in done.stdout and "s3cret" not in done.stdout + done.stderr

    @sqlite_only
    @pytest.mark.parametrize("bad", ["postgres", "missing-file", "no-tables"])
    def test_a_bad_database_is_exit_2(
        self, settings: Settings, redis_conn: redis.Redis, tmp_path: Path, bad: str
    ) -> None:
        """A closed port, a SQLite file that is not there, a database without the ledger."""
        url = {
            "postgres": UNREACHABLE_POSTGRES,
            "missing-file": f"sqlite:///{tmp_path / 'nope.db'}",
            "no-tables": f"sqlite:///{tmp_path / 'empty.db'}",
        }[bad]
        if bad == "no-tables":
            peewee.SqliteDatabase(str(tmp_path / "empty.db")).connect()
        done = sensormeter(cli_env(settings, DATABASE_URL=url), "check")
        assert done.returncode == 2, done.stdout + done.stderr
        assert codes(done.stdout) == ["database_unreachable"]
        assert "pw123" not in done.stdout + done.stderr
        assert not (tmp_path / "nope.db").exists()

    @sqlite_only
    def test_both_out_of_reach_is_two_lines(self, settings: Settings) -> None:
        """Neither service answers: a line for each."""
        env = cli_env(settings, REDIS_URL=UNREACHABLE_REDIS, DATABASE_URL=UNREACHABLE_POSTGRES)
        done = sensormeter(env, "check")
        assert done.returncode == 2
        assert codes(done.stdout) == ["database_unreachable", "redis_unreachable"]

    @sqlite_only
    def test_bad_configuration_is_a_check_line_and_exit_1(self, settings: Settings) -> None:
        """A malformed variable still gives the line a log drain alerts on."""
        done = sensormeter(cli_env(settings, SENSORMETER_CHUNK_SIZE="abc"), "check")
        assert done.returncode == 1
        assert codes(done.stdout) == ["configuration"]
        assert "SENSORMETER_CHUNK_SIZE" in done.stdout

    @sqlite_only
    @pytest.mark.parametrize("command", ["check", "status", "metrics"])
    def test_a_usage_error_is_exit_2(self, settings: Settings, command: str) -> None:
        """click's own usage errors exit 2, as the docs say."""
        done = sensormeter(cli_env(settings), command, "--no-such-option")
        assert done.returncode == 2
        assert "No such option" in done.stderr


class TestStatus:
    def test_json_has_the_facts_of_the_text_and_the_same_exit(
        self, settings: Settings, database: peewee.Database, redis_conn: redis.Redis
    ) -> None:
        """``status --json`` parses; its numbers are the text's; both exit 1 like check."""
        make_org("acme")
        hourly_row("acme", MeterReport.SENT, utcnow() - timedelta(minutes=5))
        hourly_row("acme", MeterReport.FAILED, utcnow() - timedelta(hours=2))
        register_all(make_scheduler(TEST_QUEUE, redis_conn), TEST_QUEUE)
        text = sensormeter(cli_env(settings), "status")
        done = sensormeter(cli_env(settings), "status", "--json")
        check = sensormeter(cli_env(settings), "check")
        assert text.returncode == done.returncode == check.returncode == 1, done.stderr
        facts = json.loads(done.stdout)
        lines = text.stdout.splitlines()
        counts = ", ".join(f"{k} {v}" for k, v in facts["ledger"].items())
        assert f"ledger: {counts}" in lines
        assert facts["ledger"] == {
            "pending": 0,
            "sent": 1,
            "failed": 1,
            "rejected": 0,
            "held": 0,
            "quarantined": 0,
            "superseded": 0,
        }
        assert facts["last_sent"]["organization_id"] == "acme"
        assert facts["queue"] == {"name": TEST_QUEUE, "queued": 0, "waiting_for_retry": 0}
        hourly = datetime.fromisoformat(facts["schedule"]["hourly"])
        assert f"next hourly run: {hourly}" in lines
        assert set(facts["schedule"]) == {
            "hourly",
            "sweep",
            "period_close",
            "held_recount",
            "retention",
        }
        assert all(facts["schedule"].values())
        [problem] = facts["problem_reports"]
        assert f"  failed: acme {problem['identifier']}: None" in lines
        assert [p["code"] for p in facts["problems"]] == codes(check.stdout) == ["failed_reports"]
        assert "problems: failed_reports (see 'sensormeter check')" in lines
        assert facts["late_closes"] == {"grace_hours": 1, "count": 0, "closes": []}
        assert facts["stale_pending"]["count"] == 0
        assert facts["held"] == {"count": 0, "period_close": 0}

    def test_status_exits_0_when_check_would(
        self, settings: Settings, database: peewee.Database, redis_conn: redis.Redis
    ) -> None:
        """Nothing wrong: status exits 0 and says so; no longer 0 when 'not scheduled'."""
        healthy(redis_conn)
        done = sensormeter(cli_env(settings), "status", "--json")
        assert done.returncode == 0, done.stdout
        assert json.loads(done.stdout)["problems"] == []
        assert sensormeter(cli_env(settings), "status").stdout.endswith("problems: none\n")
        redis_conn.flushdb()
        text = sensormeter(cli_env(settings), "status")
        assert text.returncode == 1
        assert "next hourly run: not scheduled (is the scheduler running?)" in text.stdout

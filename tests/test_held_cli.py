"""``sensormeter held`` and ``held release``, the check, and held reports through RQ.

End to end: the real ``sensormeter`` command in a subprocess, SQLite and PostgreSQL, real
Redis, the HTTP emulator; each test that sends ends on the billing invariants.
"""

from __future__ import annotations

import json
import sys
from datetime import timedelta

import pytest
import redis

from sensormeter.emulator import StripeEmulator
from sensormeter.hours import format_hour, hour_start
from sensormeter.models import MeterReport, Sensor, utcnow
from sensormeter.report import Report
from sensormeter.runtime import Runtime
from sensormeter.tasks.queue import JSONJob, make_queue
from sensormeter.tasks.schedule import make_scheduler, register_all

from .conftest import TEST_QUEUE, cli_env
from .factories import make_org
from .guard_scenarios import (
    assert_billed_once,
    deliver,
    evidence,
    report_hour,
    set_active,
    stripe_values,
    wait_out,
    with_history,
    work,
)
from .test_cli import sensormeter

HOUR = format_hour(hour_start(utcnow()))


@pytest.fixture(autouse=True)
def current_hour(monkeypatch: pytest.MonkeyPatch) -> None:
    """HOUR is the hour each test runs in, so a suite that crosses the top of an hour passes."""
    monkeypatch.setattr(sys.modules[__name__], "HOUR", format_hour(hour_start(utcnow())))


class TestRelease:
    def test_release_never_sends_a_value_older_than_a_delivered_one(
        self, runtime: Runtime, emulator: StripeEmulator
    ) -> None:
        """A held past hour overtaken by a newer delivery: marked superseded, said so, exit 0."""
        past = hour_start(utcnow()) - timedelta(hours=1)
        with_history(runtime, "org-7", [15])
        deliver(runtime, "org-7", 15)  # on demand, now: newer than the past hour
        Sensor.update(created_at=past + timedelta(hours=2)).where(
            Sensor.organization == "org-7"
        ).execute()
        row = report_hour(runtime, "org-7", past)
        assert row.status == MeterReport.HELD
        done = sensormeter(cli_env(runtime.settings), "held", "release", "--org", "org-7")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "superseded" in done.stdout and "cus_org-7" in done.stdout
        assert MeterReport.get_by_id(row.id).status == MeterReport.SUPERSEDED
        assert stripe_values(emulator, row.identifier) == []
        assert "superseded" in evidence(row)

    def test_release_arguments_and_nothing_to_release(self, runtime: Runtime) -> None:
        """Exactly one of ID, --org, --all; an id that is not held is exit 1, named."""
        env = cli_env(runtime.settings)
        both = sensormeter(env, "held", "release", "3", "--all")
        assert both.returncode == 2 and "exactly one of" in both.stderr
        missing = sensormeter(env, "held", "release", "999")
        assert missing.returncode == 1 and "#999 is not held" in missing.stderr
        nothing = sensormeter(env, "held", "release", "--all")
        assert nothing.returncode == 0 and "no held report" in nothing.stdout

    def test_release_all_sends_every_held_report(
        self, runtime: Runtime, emulator: StripeEmulator
    ) -> None:
        """--all: both held reports go out as they are, each once."""
        for org in ("a", "b"):
            with_history(runtime, org, [30])
            set_active(org, 0)
            assert report_hour(runtime, org, HOUR).status == MeterReport.HELD
        listed = sensormeter(cli_env(runtime.settings), "held", "--limit", "1")
        assert listed.stdout.startswith("2 held report(s), the oldest 1 listed\n"), listed.stdout
        done = sensormeter(cli_env(runtime.settings), "held", "release", "--all")
        assert done.returncode == 0, done.stdout + done.stderr
        for org in ("a", "b"):
            assert_billed_once(emulator, org, HOUR, 0)


class TestThroughRQ:
    def test_the_scheduled_recount_runs_as_an_rq_job(
        self, runtime: Runtime, emulator: StripeEmulator
    ) -> None:
        """The job the scheduler registers, stored as JSON and run by a worker, sends the row."""
        with_history(runtime, "org-7", [15, 15, 14])
        set_active("org-7", 0)
        row = report_hour(runtime, "org-7", HOUR)
        wait_out(row)
        queue = make_queue(runtime.settings, runtime.redis)
        job = queue.enqueue("sensormeter.tasks.held.recount_held_reports")
        work(runtime)
        assert JSONJob.fetch(job.id, connection=runtime.redis).get_status() == "finished"
        assert_billed_once(emulator, "org-7", HOUR, 0)

    def test_a_release_stripe_does_not_take_at_once_is_retried_by_a_job(
        self, runtime: Runtime, emulator: StripeEmulator
    ) -> None:
        """Stripe fails during the release: the row stays pending, a resend job sends it."""
        with_history(runtime, "org-7", [15])
        set_active("org-7", 0)
        row = report_hour(runtime, "org-7", HOUR)
        emulator.inject(500, times=50)
        done = sensormeter(cli_env(runtime.settings), "held", "release", str(row.id))
        assert done.returncode == 0, done.stdout + done.stderr
        assert "queued to be sent again with retries" in done.stdout
        fresh = MeterReport.get_by_id(row.id)
        assert (fresh.status, fresh.attempts) == (MeterReport.PENDING, 1)
        assert make_queue(runtime.settings, runtime.redis).count == 1
        emulator.reset()  # Stripe is back
        work(runtime)
        assert_billed_once(emulator, "org-7", HOUR, 0)
        assert MeterReport.get_by_id(row.id).attempts == 2


class TestCheck:
    def test_a_held_closing_report_fails_check_and_a_held_hour_is_a_figure(
        self, runtime: Runtime, redis_conn: redis.Redis
    ) -> None:
        """Held hourly: check stays 0, status counts it; held close: check exits 1, naming it."""
        make_org("acme")
        set_active("acme", 2)
        runtime.reporter().run(runtime.database, ["acme"], Report.hourly(HOUR))
        register_all(make_scheduler(TEST_QUEUE, redis_conn), TEST_QUEUE)
        with_history(runtime, "org-7", [15])
        set_active("org-7", 0)
        report_hour(runtime, "org-7", HOUR)
        env = cli_env(runtime.settings)
        check = sensormeter(env, "check")
        assert check.returncode == 0, check.stdout + check.stderr
        status = sensormeter(env, "status", "--json")
        assert json.loads(status.stdout)["held"] == {"count": 1, "period_close": 0}

        end = (utcnow() + timedelta(minutes=5)).replace(microsecond=0)
        runtime.reporter().run(runtime.database, ["org-7"], Report.period_close(end))
        check = sensormeter(env, "check")
        assert check.returncode == 1, check.stdout + check.stderr
        [line] = check.stdout.splitlines()
        assert line.startswith("sensormeter.check.failed held_period_close: org-7's closing report")
        assert f"period ending {end:%Y-%m-%d %H:%M} UTC" in line
        assert "sensormeter held release" in line

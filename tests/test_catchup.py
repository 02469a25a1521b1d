"""Catch-up and backfill: missed hours reported once, with the count as it was, inside the hour."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta

import pytest
import redis

from sensormeter import ledger
from sensormeter.emulator import StripeEmulator
from sensormeter.hours import format_hour, hour_start
from sensormeter.models import MeterReport, Sensor, utcnow
from sensormeter.report import Report
from sensormeter.reporter import Reporter
from sensormeter.runtime import Runtime
from sensormeter.tasks.catchup import catch_up, catchup_window, find_gaps
from sensormeter.tasks.queue import make_queue
from sensormeter.tasks.schedule import ReportingScheduler, hourly_job_id

from .conftest import SENSORMETER, cli_env, count_queries
from .factories import make_org
from .test_jobs import work

EVENT = "active_sensors"


def now_hour() -> datetime:
    return hour_start(utcnow())


def add_sensor(org: str, created: datetime, deleted: datetime | None = None) -> None:
    Sensor.create(organization=org, created_at=created, deleted_at=deleted)


def report_hour(rt: Runtime, orgs: list[str], hour: datetime) -> None:
    """What an hourly run for ``hour`` leaves in the ledger (and in the emulator)."""
    reporter = Reporter(rt.source, rt.meter, rt.settings.meter_event_name)
    reporter.run(rt.database, orgs, Report.hourly(hour))


def ledger_row(org: str, hour: datetime, status: str) -> None:
    """A bare hourly ledger row, as a run of that hour would leave it."""
    MeterReport.create(
        organization_id=org,
        event_name=EVENT,
        value=1,
        identifier=ledger.hourly_identifier(org, EVENT, hour),
        kind=MeterReport.HOURLY,
        period_hour=hour,
        stripe_customer_id=f"cus_{org}",
        measured_at=hour,
        status=status,
    )


class TestFindGaps:
    def test_missing_and_failed_hours_are_gaps_covered_ones_are_not(self, runtime: Runtime) -> None:
        """No row and failed are gaps; sent, rejected and pending are covered."""
        h = now_hour()
        hours = [h - timedelta(hours=k) for k in range(6, 0, -1)]  # h-6 .. h-1
        statuses = {0: "sent", 2: "failed", 3: "rejected", 4: "pending"}  # index 1, 5: no row
        for i, status in statuses.items():
            ledger_row("acme", hours[i], status)
        gaps = find_gaps(EVENT, ["acme"], hours)
        assert gaps == {hours[1]: ["acme"], hours[2]: ["acme"], hours[5]: ["acme"]}

    def test_never_before_the_first_reported_hour(self, runtime: Runtime) -> None:
        """An organization first reported at h-2 is not caught up for h-6..h-3."""
        h = now_hour()
        hours = [h - timedelta(hours=k) for k in range(6, 0, -1)]
        ledger_row("newco", h - timedelta(hours=2), "sent")
        assert find_gaps(EVENT, ["newco"], hours) == {h - timedelta(hours=1): ["newco"]}

    def test_an_organization_never_reported_is_not_caught_up(self, runtime: Runtime) -> None:
        """A first deployment bills no history."""
        h = now_hour()
        hours = [h - timedelta(hours=k) for k in range(6, 0, -1)]
        assert find_gaps(EVENT, ["fresh"], hours) == {}

    def test_history_before_the_window_opens_the_whole_window(self, runtime: Runtime) -> None:
        """Reported before the window, then nothing: every hour of the window is a gap."""
        h = now_hour()
        hours = [h - timedelta(hours=k) for k in range(3, 0, -1)]
        ledger_row("acme", h - timedelta(hours=10), "sent")
        assert find_gaps(EVENT, ["acme"], hours) == {hour: ["acme"] for hour in hours}

    def test_complete_organizations_are_not_read_in_detail(self, runtime: Runtime) -> None:
        """A chunk with nothing missing costs one aggregate query."""
        h = now_hour()
        hours = [h - timedelta(hours=k) for k in range(3, 0, -1)]
        for org in ("a", "b"):
            for hour in hours:
                ledger_row(org, hour, "sent")
        with count_queries() as counter:
            assert find_gaps(EVENT, ["a", "b"], hours) == {}
        assert len(counter.statements) == 1

    def test_another_event_name_does_not_cover_an_hour(self, runtime: Runtime) -> None:
        """Rows of another meter say nothing about this one."""
        h = now_hour()
        hours = [h - timedelta(hours=2), h - timedelta(hours=1)]
        ledger_row("acme", hours[0], "sent")
        assert find_gaps("other_meter", ["acme"], hours) == {}
        assert find_gaps(EVENT, ["acme"], hours) == {hours[1]: ["acme"]}


class TestCatchUpJob:
    def test_missed_hours_are_reported_with_the_count_of_then(
        self, runtime: Runtime, emulator: StripeEmulator
    ) -> None:
        """Workers down for three hours: each hour lands once, stamped inside it, as it was."""
        h = now_hour()
        make_org("acme")
        add_sensor("acme", h - timedelta(hours=10))
        add_sensor("acme", h - timedelta(hours=10), deleted=h - timedelta(hours=2, minutes=30))
        add_sensor("acme", h - timedelta(hours=1, minutes=30))
        report_hour(runtime, ["acme"], h - timedelta(hours=4))
        catch_up()
        work(runtime)
        events = sorted(emulator.events(), key=lambda e: e.timestamp)
        labels = [format_hour(h - timedelta(hours=k)) for k in (4, 3, 2, 1)]
        assert [e.identifier for e in events] == [f"{EVENT}-acme-{label}" for label in labels]
        # Counted at each hour's last second: one sensor deleted at h-3:30, one added at h-2:30.
        assert [e.value for e in events] == [2, 1, 2, 2]
        for event, k in zip(events, (4, 3, 2, 1), strict=True):
            start = (h - timedelta(hours=k)).replace(tzinfo=UTC).timestamp()
            assert start <= event.timestamp < start + 3600
        assert MeterReport.select().where(MeterReport.status != "sent").count() == 0
        # A second catch-up finds nothing left to do.
        assert catch_up()["jobs"] == 0

    def test_the_window_is_bounded_by_the_setting(self, runtime: Runtime) -> None:
        """SENSORMETER_CATCHUP_HOURS=3 looks at three hours; 0 at none."""
        settings = runtime.settings.with_overrides(catchup_hours=3)
        now = utcnow()
        assert len(catchup_window(settings, now, include_current=False)) == 3
        assert catchup_window(settings, now, include_current=True)[-1] == hour_start(now)
        assert (
            catchup_window(settings.with_overrides(catchup_hours=0), now, include_current=True)
            == []
        )

    def test_non_billable_organizations_are_not_caught_up(
        self, runtime: Runtime, emulator: StripeEmulator
    ) -> None:
        """A subscription canceled since is not billed for the hours it missed."""
        h = now_hour()
        make_org("gone", status="canceled")
        ledger_row("gone", h - timedelta(hours=3), "sent")
        assert catch_up()["jobs"] == 0


class TestScheduler:
    def test_lost_registrations_are_restored_and_a_catch_up_queued(
        self, runtime: Runtime, redis_conn: redis.Redis
    ) -> None:
        """Redis restarted empty: the next tick registers the jobs again and queues a catch-up."""
        scheduler = ReportingScheduler(runtime.settings, redis_conn)
        scheduler.start()
        queue = make_queue(runtime.settings, redis_conn)
        assert [j.func_name for j in queue.get_jobs()] == ["sensormeter.tasks.catchup.catch_up"]
        redis_conn.flushdb()  # what a restart without persistence leaves
        scheduler.enqueue_jobs()
        key = scheduler.scheduled_jobs_key
        assert redis_conn.zscore(key, hourly_job_id(runtime.settings.queue_name)) is not None
        assert [j.func_name for j in queue.get_jobs()] == ["sensormeter.tasks.catchup.catch_up"]
        assert redis_conn.zcard(key) == 5  # hourly, sweep, period close, held recount, retention
        scheduler.enqueue_jobs()  # registrations present: nothing more is queued
        assert queue.count == 1


class TestBackfillCommand:
    def test_backfill_reports_missing_hours_of_one_organization(
        self, runtime: Runtime, emulator: StripeEmulator
    ) -> None:
        """`backfill --since --until --org` reports that organization's missing hours only."""
        h = now_hour()
        for org in ("acme", "other"):
            make_org(org)
            add_sensor(org, h - timedelta(hours=20))
            ledger_row(org, h - timedelta(hours=6), "sent")
        since = format_hour(h - timedelta(hours=6))
        until = format_hour(h - timedelta(hours=3))
        env = cli_env(runtime.settings)
        dry = subprocess.run(
            [
                *SENSORMETER,
                "backfill",
                "--since",
                since,
                "--until",
                until,
                "--org",
                "acme",
                "--dry-run",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert dry.returncode == 0, dry.stderr
        assert "3 missing hourly report(s)" in dry.stderr and emulator.events() == []
        run = subprocess.run(
            [*SENSORMETER, "backfill", "--since", since, "--until", until, "--org", "acme"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 0, run.stderr
        assert "backfill: sent 3" in run.stdout
        assert sorted(e.identifier for e in emulator.events()) == [
            f"{EVENT}-acme-{format_hour(h - timedelta(hours=k))}" for k in (5, 4, 3)
        ]
        again = subprocess.run(
            [*SENSORMETER, "backfill", "--since", since, "--until", until, "--org", "acme"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "0 missing hourly report(s)" in again.stderr and len(emulator.events()) == 3

    def test_backfill_of_a_non_billable_organization_says_why(
        self, runtime: Runtime, emulator: StripeEmulator
    ) -> None:
        """`backfill --org` for a canceled organization names the reason and sends nothing."""
        make_org("gone", status="canceled")
        since = format_hour(now_hour() - timedelta(hours=3))
        run = subprocess.run(
            [*SENSORMETER, "backfill", "--since", since, "--org", "gone"],
            env=cli_env(runtime.settings),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 1
        assert "gone is not billable (subscription status not billable: canceled)" in run.stderr
        assert emulator.events() == []

    @pytest.mark.parametrize(
        ("since", "problem"),
        [
            ("yesterday", "is not a UTC hour"),
            ("2020-01-01", "older than Stripe's 35-day window"),
            ("2999-01-01T00", "in the future"),
        ],
    )
    def test_bad_window_is_one_clear_error(
        self, runtime: Runtime, emulator: StripeEmulator, since: str, problem: str
    ) -> None:
        """A malformed, too old or future --since is refused before anything is sent."""
        run = subprocess.run(
            [*SENSORMETER, "backfill", "--since", since],
            env=cli_env(runtime.settings),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 2 and problem in run.stderr
        assert "Traceback" not in run.stderr and emulator.events() == []

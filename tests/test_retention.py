"""Ledger retention: the prune removes exactly what is older than kept, and reads say so."""

from __future__ import annotations

import json
import subprocess
import threading
from datetime import UTC, datetime, timedelta

import peewee
import pytest
import redis
from prometheus_client import generate_latest

from sensormeter import ledger
from sensormeter.emulator import StripeEmulator
from sensormeter.errors import ConfigurationError
from sensormeter.hours import format_hour, hour_start
from sensormeter.keys import retention_lock_key
from sensormeter.ledger import retention
from sensormeter.ledger.explanation import REMOVED, Context, explain
from sensormeter.ledger.history import RUNS
from sensormeter.models import BillableInterval, MeterReport, Quarantine, Sensor, utcnow
from sensormeter.ops.metrics import make_registry
from sensormeter.reconcile import reconcile
from sensormeter.report import Report
from sensormeter.reporter import Reporter
from sensormeter.runtime import Runtime
from sensormeter.settings import Settings
from sensormeter.tasks.catchup import catch_up
from sensormeter.tasks.retention import last_prune, prune_ledger
from sensormeter.tasks.schedule import (
    make_scheduler,
    register_all,
    retention_job_id,
    scheduled_run_time,
)

from .conftest import SENSORMETER, TEST_QUEUE, cli_env
from .factories import make_org
from .test_jobs import work

EVENT = "active_sensors"
H = timedelta(hours=1)
D = timedelta(days=1)
STATUSES = [MeterReport.SENT, MeterReport.FAILED, MeterReport.HELD, MeterReport.QUARANTINED]


def row(org: str, stamp: datetime, status: str = MeterReport.SENT, value: int = 3) -> None:
    """A hourly ledger row stamped at ``stamp`` (its hour is the stamp's)."""
    hour = hour_start(stamp)
    MeterReport.create(
        organization_id=org,
        event_name=EVENT,
        value=value,
        identifier=f"{ledger.hourly_identifier(org, EVENT, hour)}-{stamp:%M%S}",
        kind=MeterReport.HOURLY,
        period_hour=hour,
        stripe_customer_id=f"cus_{org}",
        measured_at=stamp,
        status=status,
    )


def seed(before: datetime, older: int, newer: int) -> None:
    """``older`` rows stamped before ``before`` (the last one second before it), ``newer``
    rows at or after it (the first one exactly on it); statuses of every kind."""
    rows = [
        {
            "organization_id": f"org-{i % 7}",
            "event_name": EVENT,
            "value": i,
            "identifier": f"id-{i}",
            "kind": MeterReport.HOURLY,
            "period_hour": hour_start(stamp),
            "stripe_customer_id": f"cus_{i % 7}",
            "measured_at": stamp,
            "status": STATUSES[i % len(STATUSES)],
        }
        for i, stamp in enumerate(
            [before - timedelta(seconds=1) - k * timedelta(minutes=7) for k in range(older)]
            + [before + k * timedelta(minutes=7) for k in range(newer)]
        )
    ]
    with MeterReport._meta.database.atomic():
        for start in range(0, len(rows), 500):
            MeterReport.insert_many(rows[start : start + 500]).execute()


def stamps() -> list[datetime]:
    """Every ledger row's stamp, naive UTC."""
    return [
        s if isinstance(s, datetime) else datetime.fromisoformat(str(s))
        for (s,) in MeterReport.select(MeterReport.measured_at).tuples()
    ]


class TestSetting:
    def test_default_is_thirteen_months_and_off_keeps_everything(self) -> None:
        """400 days by default; 0 or 'off' keeps the whole ledger."""
        assert Settings().retention_days == 400
        assert Settings.from_env({"SENSORMETER_RETENTION_DAYS": "off"}).retention_days == 0
        assert Settings.from_env({"SENSORMETER_RETENTION_DAYS": "0"}).retention_days == 0
        assert Settings.from_env({"SENSORMETER_RETENTION_DAYS": "40"}).retention_days == 40

    @pytest.mark.parametrize("raw", ["39", "1", "-5", "36501", "a year"])
    def test_too_short_or_malformed_is_one_clear_error(self, raw: str) -> None:
        """Below Stripe's 35 days and the look-backs (with margin), the setting is refused."""
        with pytest.raises(ConfigurationError) as error:
            Settings.from_env({"SENSORMETER_RETENTION_DAYS": raw})
        assert "SENSORMETER_RETENTION_DAYS" in str(error.value)

    def test_first_kept_hour_is_a_whole_hour(self) -> None:
        """An hour is kept or removed whole."""
        now = datetime(2026, 12, 2, 6, 41, 7)
        assert retention.kept_since(400, now) == datetime(2025, 10, 28, 6)
        assert retention.kept_since(0, now) is None


class TestPrune:
    def test_removes_exactly_the_rows_older_than_kept_in_batches(
        self, database: peewee.Database
    ) -> None:
        """Every status older than the first kept hour goes, nothing at or after it."""
        before = hour_start(utcnow()) - 40 * D
        seed(before, older=23, newer=11)
        pruned = retention.prune_reports(database, before, batch=5, sleep=lambda s: None)
        assert pruned.reports == 23 and pruned.complete
        assert pruned.batches == 5  # 5+5+5+5+3: the short batch ends the run
        assert pruned.by_status == {"sent": 6, "failed": 6, "held": 6, "quarantined": 5}
        assert pruned.undelivered == 17
        kept = stamps()
        assert len(kept) == 11 and min(kept) == before
        # A second run has nothing to do: one statement, nothing removed.
        again = retention.prune_reports(database, before, batch=5)
        assert (again.reports, again.batches) == (0, 1)

    def test_budget_stops_between_batches(self, database: peewee.Database) -> None:
        """Past its time budget a run starts no batch, and says it is not complete."""
        before = hour_start(utcnow()) - 40 * D
        seed(before, older=12, newer=1)
        ticks = iter(range(100))
        pruned = retention.prune_reports(
            database,
            before,
            batch=5,
            budget_seconds=2,
            clock=lambda: float(next(ticks)),
            sleep=lambda s: None,
        )
        assert (pruned.reports, pruned.complete) == (5, False)
        assert len(stamps()) == 8

    def test_two_prunes_at_once_remove_everything_once_without_error(
        self, database: peewee.Database
    ) -> None:
        """Two schedulers' jobs at the same time: no error, every old row gone, no new one."""
        before = hour_start(utcnow()) - 40 * D
        seed(before, older=600, newer=50)
        results: list[retention.Pruned] = []
        errors: list[BaseException] = []

        def run() -> None:
            try:
                with database.connection_context():
                    results.append(
                        retention.prune_reports(database, before, batch=20, sleep=lambda s: None)
                    )
            except BaseException as exc:  # noqa: BLE001 (the test reports any failure)
                errors.append(exc)

        threads = [threading.Thread(target=run) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
        assert sum(r.reports for r in results) == 600
        kept = stamps()
        assert len(kept) == 50 and min(kept) == before

    def test_history_and_released_quarantines_older_than_kept_go(
        self, database: peewee.Database
    ) -> None:
        """Intervals that ended before it go (hourly-run records too); one reaching into the
        kept hours stays whole; an open quarantine stays whatever its age."""
        before = hour_start(utcnow()) - 40 * D
        for org, first, last in [
            ("old", before - 90 * D, before - H),
            (RUNS, before - 90 * D, before - 2 * H),
            ("straddles", before - 90 * D, before),
            (RUNS, before - H, before + 5 * D),
        ]:
            BillableInterval.create(
                organization_id=org, stripe_customer_id="cus", first_hour=first, last_hour=last
            )
        for subject, released in [("gone", before - D), ("kept", before + H), ("open", None)]:
            Quarantine.create(
                scope=Quarantine.CUSTOMER,
                subject=subject,
                code="resource_missing",
                reason="no such customer",
                since=before - 60 * D,
                released_at=released,
            )
        assert retention.prune_history(database, before, batch=1) == 2
        assert retention.prune_quarantines(database, before) == 1
        left = sorted((i.organization_id, str(i.last_hour)) for i in BillableInterval.select())
        assert [org for org, _ in left] == [RUNS, "straddles"]
        assert sorted(q.subject for q in Quarantine.select()) == ["kept", "open"]


class TestBillingAfterPrune:
    def test_kept_window_still_billed_once_each_hour_with_its_count(
        self, runtime: Runtime, emulator: StripeEmulator
    ) -> None:
        """Old rows removed, the recent hours' rows kept: a catch-up and a rerun of each hour
        send nothing more, and each hour went out once, with its count, stamped inside it."""
        now = hour_start(utcnow())
        make_org("acme", active=4)
        make_org("globex", active=2)
        Sensor.update(created_at=now - 10 * H).execute()
        before = retention.kept_since(40, utcnow())
        assert before is not None
        for k in range(1, 30):  # an ancient ledger: hours that are no longer kept
            row("acme", before - k * H + timedelta(minutes=59, seconds=59))
        hours = [now - k * H for k in (3, 2, 1)]
        reporter = Reporter(runtime.source, runtime.meter, EVENT)
        for hour in hours:
            reporter.run(runtime.database, ["acme", "globex"], Report.hourly(hour))
        pruned = retention.prune_reports(runtime.database, before, batch=7, sleep=lambda s: None)
        assert pruned.reports == 29
        assert MeterReport.select().count() == 6
        sent = len(emulator.events())
        catch_up()
        work(runtime)
        for hour in hours:  # a delayed job of a kept hour finds its row: nothing resent
            reporter.run(runtime.database, ["acme", "globex"], Report.hourly(hour))
        events = emulator.events()
        assert len(events) == sent == 6
        for org, count in (("acme", 4), ("globex", 2)):
            for hour in hours:
                identifier = ledger.hourly_identifier(org, EVENT, hour)
                [event] = [e for e in events if e.identifier == identifier]
                start = hour.replace(tzinfo=UTC).timestamp()
                assert (event.value, event.customer) == (count, f"cus_{org}")
                assert start <= event.timestamp < start + 3600
        assert MeterReport.select().where(MeterReport.status != MeterReport.SENT).count() == 0


class TestJob:
    def test_job_prunes_remembers_and_is_registered(
        self, runtime: Runtime, redis_conn: redis.Redis
    ) -> None:
        """The hourly job removes the old rows, keeps its figures for status, and is
        registered with the others; a second one while the first holds the lock does nothing."""
        before = retention.kept_since(runtime.settings.retention_days, utcnow())
        assert before is not None
        seed(before, older=9, newer=4)
        redis_conn.set(retention_lock_key(TEST_QUEUE), "another", ex=60)
        assert prune_ledger()["pruned"] is False
        assert len(stamps()) == 13
        redis_conn.delete(retention_lock_key(TEST_QUEUE))
        done = prune_ledger()
        assert (done["pruned"], done["reports"], done["undelivered"]) == (True, 9, 6)
        assert len(stamps()) == 4
        last = last_prune(redis_conn, TEST_QUEUE)
        assert last is not None and last["reports"] == 9 and last["retention_days"] == 400
        assert redis_conn.get(retention_lock_key(TEST_QUEUE)) is None
        scraped = generate_latest(make_registry(runtime.settings)).decode()
        assert "sensormeter_retention_last_prune_removed 9.0" in scraped
        assert "sensormeter_retention_last_prune_complete 1.0" in scraped
        scheduler = make_scheduler(TEST_QUEUE, redis_conn)
        register_all(scheduler, TEST_QUEUE)
        assert retention_job_id(TEST_QUEUE) in scheduler
        assert scheduled_run_time(scheduler, TEST_QUEUE) is not None


class TestNotices:
    def test_explain_says_hours_before_kept_were_removed(self, database: peewee.Database) -> None:
        """An hour before the first kept one is 'removed', not missed; JSON carries the notice."""
        now = utcnow()
        reach = retention.Reach.at(40, now)
        assert reach.first_kept is not None
        first = reach.first_kept - 2 * H
        context = Context(
            now=now,
            event_name=EVENT,
            catchup=None,
            catchup_hours=48,
            not_billable_now=None,
            reach=reach,
        )
        found = explain(database, "acme", first, reach.first_kept + H, context)
        assert [line.state for line in found.lines[:2]] == [REMOVED, REMOVED]
        assert "the ledger keeps 40 days" in found.lines[0].text
        assert found.lines[2].state != REMOVED
        facts = found.as_dict()
        assert facts["retention_days"] == 40
        assert facts["notice"] and "were removed" in facts["notice"]
        inside = explain(database, "acme", reach.first_kept, reach.first_kept + H, context)
        assert inside.notice is None and inside.as_dict()["notice"] is None

    def test_reconcile_compares_only_the_kept_hours(
        self, settings: Settings, database: peewee.Database, emulator: StripeEmulator
    ) -> None:
        """A window reaching back before the kept hours compares from the first kept hour."""
        now = utcnow()
        kept = settings.with_overrides(retention_days=40)
        first = retention.kept_since(40, now)
        assert first is not None
        found = reconcile(kept, first - 5 * D, first + H, now=now)
        assert found.compared_from == first and found.clean
        before = reconcile(kept, first - 5 * D, first - D, now=now)
        assert before.compared_from == first - D and before.hours == 0
        assert (
            reconcile(settings.with_overrides(retention_days=0), first, first + H).compared_from
            is None
        )

    def test_cli_notices_in_text_and_json(
        self,
        settings: Settings,
        database: peewee.Database,
        emulator: StripeEmulator,
        redis_conn: redis.Redis,
    ) -> None:
        """explain, whatif and reconcile print the notice; their JSON carries it."""
        env = cli_env(settings, SENSORMETER_RETENTION_DAYS="40")
        old = format_hour(hour_start(utcnow()) - 41 * D)
        day = old[:10]

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [*SENSORMETER, *args], env=env, capture_output=True, text=True, timeout=60
            )

        text = run("explain", "acme", "--since", old, "--until", old)
        assert "note: the ledger keeps 40 days: hours before" in text.stdout, text.stderr
        assert "nothing known" in text.stdout
        facts = json.loads(run("explain", "acme", "--since", old, "--json").stdout)
        assert facts["retention_days"] == 40 and "were removed" in facts["notice"]
        assert facts["hours"][0]["state"] == REMOVED
        whatif = json.loads(
            run("whatif", "--since", day, "--until", day, "--format", "json").stdout
        )
        assert "were removed" in whatif["notice"]
        table = run("whatif", "--since", day, "--until", day)
        assert "note: the ledger keeps 40 days" in table.stdout
        recon = run("reconcile", "--since", old)
        assert "those hours were not compared" in recon.stdout, recon.stderr
        assert recon.returncode == 0
        gone = run("reconcile", "--since", old, "--until", old)
        assert "those hours were not compared" in gone.stdout
        assert f"reconcile {old}..{old} UTC: 0 customer(s) checked, 0 hour(s)" in gone.stdout
        dry = run("prune", "--dry-run")
        assert "0 report(s) would be removed" in dry.stdout, dry.stderr
        done = run("prune")
        assert "removed 0 report(s)" in done.stdout, done.stderr
        status = json.loads(run("status", "--json").stdout)
        assert status["retention"] == {"days": 40, "last_prune": None}
        assert "ledger retention: 40 days; no prune has run yet" in run("status").stdout

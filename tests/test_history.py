"""Billable history: who was billable when, and how past-hour reports, catch-up and backfill use it.

The hourly fan-out records intervals; a report of a past hour bills whom the history had
billable then (under the customer of then), and catch-up bills an organization canceled
since for the hours it missed while it was billable, and for no other.
"""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta

import peewee
import pytest

from sensormeter import ledger
from sensormeter.emulator import StripeEmulator
from sensormeter.hours import format_hour, hour_start
from sensormeter.ledger import history, past
from sensormeter.meters import InMemoryMeterClient
from sensormeter.models import BillableInterval, MeterReport, Sensor, Subscription, utcnow
from sensormeter.report import Report
from sensormeter.reporter import Reporter
from sensormeter.runtime import Runtime
from sensormeter.settings import Settings
from sensormeter.tasks.catchup import catch_up
from sensormeter.tasks.fanout import report_all_sensor_counts
from sensormeter.usage import DatabaseUsageSource

from .conftest import SENSORMETER, cli_env, count_queries
from .factories import make_org
from .test_jobs import work

EVENT = "active_sensors"
H = timedelta(hours=1)


def now_hour() -> datetime:
    return hour_start(utcnow())


def stretches(org: str) -> list[tuple[str, datetime, datetime]]:
    """An organization's intervals as (customer, first hour, last hour), oldest first."""
    return [(i.customer, i.first_hour, i.last_hour) for i in history.intervals(org)]


def run_at(database: peewee.Database, customers: dict[str, str], hour: datetime) -> None:
    """What a complete hourly fan-out of ``hour`` records (bridging over the default window)."""
    history.record(database, customers, hour, bridge_hours=48)
    history.mark_run(database, hour)


def add_sensor(org: str, created: datetime, deleted: datetime | None = None) -> None:
    Sensor.create(organization=org, created_at=created, deleted_at=deleted)


def old_org(org_id: str, count: int, **options: str) -> None:
    """An organization (make_org's options) with ``count`` sensors active for ten hours."""
    make_org(org_id, **options)
    for _ in range(count):
        add_sensor(org_id, now_hour() - 10 * H)


def set_status(org: str, status: str) -> None:
    Subscription.update(status=status).where(Subscription.organization == org).execute()


class TestRecord:
    def test_a_run_each_hour_extends_one_interval(self, database: peewee.Database) -> None:
        """Billable at three hours in a row under one customer: one interval, three hours."""
        h = now_hour()
        for k in (3, 2, 1):
            run_at(database, {"acme": "cus_a"}, h - k * H)
        assert stretches("acme") == [("cus_a", h - 3 * H, h - H)]

    def test_a_recorded_hour_without_the_organization_starts_a_new_interval(
        self, database: peewee.Database
    ) -> None:
        """Not billable at h-2 (a run recorded the fleet without it): h-2 is in no interval."""
        h = now_hour()
        run_at(database, {"acme": "cus_a", "other": "cus_o"}, h - 3 * H)
        run_at(database, {"other": "cus_o"}, h - 2 * H)
        run_at(database, {"acme": "cus_a", "other": "cus_o"}, h - H)
        assert stretches("acme") == [("cus_a", h - 3 * H, h - 3 * H), ("cus_a", h - H, h - H)]
        assert stretches("other") == [("cus_o", h - 3 * H, h - H)]

    def test_hours_no_run_recorded_are_bridged_within_the_catch_up_window(
        self, database: peewee.Database
    ) -> None:
        """Workers down for three hours: the interval spans them, so catch-up finds them."""
        h = now_hour()
        run_at(database, {"acme": "cus_a"}, h - 5 * H)
        history.record(database, {"acme": "cus_a"}, h - H, bridge_hours=3)
        assert stretches("acme") == [("cus_a", h - 5 * H, h - H)]

    def test_a_gap_longer_than_the_window_is_not_bridged(self, database: peewee.Database) -> None:
        """Down for longer than SENSORMETER_CATCHUP_HOURS: a new interval starts."""
        h = now_hour()
        run_at(database, {"acme": "cus_a"}, h - 5 * H)
        history.record(database, {"acme": "cus_a"}, h - H, bridge_hours=2)
        assert stretches("acme") == [("cus_a", h - 5 * H, h - 5 * H), ("cus_a", h - H, h - H)]

    def test_a_fan_out_cut_off_before_its_end_marks_no_run(self, database: peewee.Database) -> None:
        """A chunk recorded by a run that never finished does not cut the others' intervals."""
        h = now_hour()
        run_at(database, {"a": "cus_a", "b": "cus_b"}, h - 3 * H)
        history.record(database, {"a": "cus_a"}, h - 2 * H, bridge_hours=48)  # cut off after a
        run_at(database, {"a": "cus_a", "b": "cus_b"}, h - H)
        assert stretches("b") == [("cus_b", h - 3 * H, h - H)]
        assert history.recorded_runs(h - 5 * H, h) == [(h - 3 * H, h - 3 * H), (h - H, h - H)]

    def test_a_customer_change_starts_a_new_interval(self, database: peewee.Database) -> None:
        """Moved to another Stripe customer: the hours before stay under the old one."""
        h = now_hour()
        run_at(database, {"acme": "cus_old"}, h - 2 * H)
        run_at(database, {"acme": "cus_new"}, h - H)
        assert stretches("acme") == [
            ("cus_old", h - 2 * H, h - 2 * H),
            ("cus_new", h - H, h - H),
        ]
        assert history.customers_at(["acme"], h - 2 * H) == {"acme": "cus_old"}
        assert history.customers_at(["acme"], h - H) == {"acme": "cus_new"}

    def test_recording_an_hour_twice_changes_nothing(self, database: peewee.Database) -> None:
        """A fan-out run twice in its hour leaves the history as the first run left it."""
        h = now_hour()
        run_at(database, {"a": "cus_a"}, h - H)
        run_at(database, {"a": "cus_a", "b": "cus_b"}, h)
        before = list(BillableInterval.select().order_by(BillableInterval.id).dicts())
        again = history.record(database, {"a": "cus_a", "b": "cus_b"}, h, bridge_hours=48)
        history.mark_run(database, h)
        assert again == history.Recorded(extended=0, started=0, unchanged=2)
        assert list(BillableInterval.select().order_by(BillableInterval.id).dicts()) == before

    def test_a_chunk_costs_the_same_few_statements_whatever_its_size(
        self, database: peewee.Database
    ) -> None:
        """Steady state: one read and one update per chunk, never one per organization."""
        h = now_hour()
        small = {f"org{i}": f"cus_{i}" for i in range(3)}
        large = {f"org{i}": f"cus_{i}" for i in range(300)}
        costs = []
        for customers in (small, large):
            BillableInterval.delete().execute()
            history.record(database, customers, h - H, bridge_hours=48)
            with count_queries() as counter:
                recorded = history.record(database, customers, h, bridge_hours=48)
            assert recorded.extended == len(customers)
            costs.append(len(counter.statements))
        assert costs[0] == costs[1] <= 4  # SELECT, UPDATE (and the transaction around it)

    def test_blank_customers_and_malformed_ids_are_not_recorded(
        self, database: peewee.Database
    ) -> None:
        """What the reporter would skip is not billable history either."""
        h = now_hour()
        history.record(
            database, {"ok": "cus_ok", "blank": "  ", " bad": "cus_x"}, h, bridge_hours=1
        )
        assert [i.organization_id for i in history.intervals("ok")] == ["ok"]
        assert BillableInterval.select().count() == 1


class TestReads:
    def test_members_known_since_and_windows(self, database: peewee.Database) -> None:
        """Members of a customer at an hour, first recorded hours, organizations of a window."""
        h = now_hour()
        run_at(database, {"a": "cus_x", "b": "cus_x"}, h - 3 * H)
        run_at(database, {"a": "cus_x", "c": "cus_x"}, h - 2 * H)
        assert history.members_at(["cus_x"], h - 3 * H) == {"cus_x": ["a", "b"]}
        assert history.members_at(["cus_x"], h - 2 * H) == {"cus_x": ["a", "c"]}
        assert history.known_since(["a", "c", "z"]) == {"a": h - 3 * H, "c": h - 2 * H}
        assert history.organizations_between(h - 2 * H, h, None, 10) == ["a", "c"]
        assert history.organizations_between(h - 5 * H, h, "a", 1) == ["b"]
        assert past.past_hour(h - H) == h - H and past.past_hour(h) is None


class TestPastHourReports:
    """A report of a past hour bills whom the history had billable then."""

    def source(self, database: peewee.Database) -> DatabaseUsageSource:
        return DatabaseUsageSource(database, Settings().billable_status_values)

    def test_billable_then_is_reported_under_the_customer_of_then(
        self, database: peewee.Database
    ) -> None:
        """Canceled since, and billable at h-2 under cus_old: the h-2 report goes to cus_old."""
        h = now_hour()
        old_org("acme", 3, customer="cus_new", status="canceled")
        run_at(database, {"acme": "cus_old"}, h - 2 * H)
        meter = InMemoryMeterClient()
        Reporter(self.source(database), meter, EVENT).run(
            database, ["acme"], Report.hourly(h - 2 * H)
        )
        assert [(e.customer, e.value) for e in meter.events] == [("cus_old", 3)]

    def test_not_billable_then_is_skipped_with_the_reason(self, database: peewee.Database) -> None:
        """Billable now, but a run at h-2 recorded the fleet without it: nothing for h-2."""
        h = now_hour()
        old_org("acme", 3)
        run_at(database, {"acme": "cus_acme"}, h - 3 * H)
        run_at(database, {}, h - 2 * H)
        meter = InMemoryMeterClient()
        result = Reporter(self.source(database), meter, EVENT).run(
            database, ["acme"], Report.hourly(h - 2 * H)
        )
        assert result.skipped == {
            "acme": f"not billable at {format_hour(h - 2 * H)} (billable history)"
        }
        assert meter.events == [] and MeterReport.select().count() == 0

    def test_before_the_history_knows_it_the_source_answers(
        self, database: peewee.Database
    ) -> None:
        """An hour before the first recorded one (an upgraded database): billable now counts."""
        h = now_hour()
        old_org("acme", 3)
        run_at(database, {"acme": "cus_acme"}, h - H)
        meter = InMemoryMeterClient()
        Reporter(self.source(database), meter, EVENT).run(
            database, ["acme"], Report.hourly(h - 3 * H)
        )
        assert [(e.customer, e.value) for e in meter.events] == [("cus_acme", 3)]

    def test_a_shared_customers_past_sum_counts_only_its_members_of_then(
        self, database: peewee.Database
    ) -> None:
        """At h-2 cus_x had a, b and d; c joined it since and d left: the h-2 sum is a+b+d."""
        h = now_hour()
        old_org("a", 10, customer="cus_x")
        old_org("b", 1, customer="cus_x")
        old_org("c", 100, customer="cus_x")  # under cus_c at h-2
        old_org("d", 5, customer="cus_x", status="canceled")
        for k in (3, 2):
            run_at(database, {"a": "cus_x", "b": "cus_x", "c": "cus_c", "d": "cus_x"}, h - k * H)
        run_at(database, {"a": "cus_x", "b": "cus_x", "c": "cus_x"}, h - H)
        meter = InMemoryMeterClient()
        reporter = Reporter(self.source(database), meter, EVENT)
        result = reporter.run(database, ["a"], Report.hourly(h - 2 * H))
        assert result.statuses == {"a": "sent", "b": "sent", "d": "sent"}
        reporter.run(database, ["c"], Report.hourly(h - 2 * H))
        start = (h - 2 * H).replace(tzinfo=UTC).timestamp()
        assert all(start <= e.timestamp < start + 3600 for e in meter.events)
        assert sorted((e.customer, e.value) for e in meter.events) == [
            ("cus_c", 100),
            ("cus_x", 16),
        ]
        # The current hour's sum is today's members: a, b and c.
        reporter.run(database, ["a"], Report.hourly(h))
        assert [e.value for e in meter.events if e.customer == "cus_x"][-1] == 111


def lost_reports_then_canceled(runtime: Runtime) -> dict[datetime, int]:
    """The issue's case: billable with lost reports, then canceled; the hours it owes.

    acme is billable h-6..h-5, past_due at h-4 (a run recorded the fleet without it),
    billable again h-3..h-1, canceled before h. Its reports of h-6 and h-3 were delivered;
    those of h-5, h-2 and h-1 were lost (no ledger row, or failed). Returns the owed hours
    with the count of each (one sensor more every hour).
    """
    h = now_hour()
    database = runtime.database
    make_org("acme")
    make_org("steady", active=2)
    for k in range(7, 0, -1):
        add_sensor("acme", h - k * H + timedelta(minutes=30))
    reporter = runtime.reporter()
    for k in (6, 5, 4, 3, 2, 1):
        billable = {"steady": "cus_steady"}
        if k != 4:
            billable["acme"] = "cus_acme"
        run_at(database, billable, h - k * H)
        if k in (6, 3):
            reporter.run(database, ["acme", "steady"], Report.hourly(h - k * H))
        else:
            reporter.run(database, ["steady"], Report.hourly(h - k * H))
    MeterReport.create(  # h-2's report of acme failed for good
        organization_id="acme",
        event_name=EVENT,
        value=6,
        identifier=ledger.hourly_identifier("acme", EVENT, h - 2 * H),
        kind=MeterReport.HOURLY,
        period_hour=h - 2 * H,
        stripe_customer_id="cus_acme",
        measured_at=h - 2 * H + timedelta(minutes=59),
        status=MeterReport.FAILED,
    )
    set_status("acme", "canceled")
    # A sensor created at the middle of each hour: at the last second of hour h-k, 8-k.
    return {h - k * H: 8 - k for k in (5, 2, 1)}


def assert_billed_once_each(emulator: StripeEmulator, owed: dict[datetime, int]) -> None:
    """acme's events: one per billable hour (the delivered ones and the owed ones), inside it."""
    h = now_hour()
    billable = {h - 6 * H: 2, h - 3 * H: 5, **owed}
    events = sorted(
        (e for e in emulator.events() if e.customer == "cus_acme"), key=lambda e: e.timestamp
    )
    assert [e.identifier for e in events] == [
        ledger.hourly_identifier("acme", EVENT, hour) for hour in sorted(billable)
    ]
    for event, hour in zip(events, sorted(billable), strict=True):
        start = hour.replace(tzinfo=UTC).timestamp()
        assert start <= event.timestamp < start + 3600
        assert event.value == billable[hour]
    rows = MeterReport.select().where(MeterReport.organization_id == "acme")
    assert {r.period_hour for r in rows} == set(billable)  # nothing for h-4 or h
    assert {r.status for r in rows} == {"sent"}


class TestCanceledAfterMissingHours:
    def test_the_next_hourly_run_and_its_catch_up_bill_exactly_the_missed_hours(
        self, runtime: Runtime, emulator: StripeEmulator
    ) -> None:
        """The first fan-out after the cancellation queues a catch-up that bills h-5, h-2, h-1."""
        owed = lost_reports_then_canceled(runtime)
        report_all_sensor_counts()  # the hourly run of h: acme is not billable now
        work(runtime)
        assert_billed_once_each(emulator, owed)
        assert stretches("acme")[-1][2] == now_hour() - H  # h recorded without acme
        assert catch_up()["reports"] == 0

    @pytest.mark.parametrize("only_acme", [True, False])
    def test_backfill_bills_exactly_the_missed_hours(
        self, runtime: Runtime, emulator: StripeEmulator, only_acme: bool
    ) -> None:
        """`sensormeter backfill --since h-8 [--org acme]` bills h-5, h-2, h-1, once."""
        owed = lost_reports_then_canceled(runtime)
        since, until = format_hour(now_hour() - 8 * H), format_hour(now_hour() - H)
        command = [*SENSORMETER, "backfill", "--since", since, "--until", until]
        command += ["--org", "acme"] if only_acme else []
        env = cli_env(runtime.settings)
        dry = subprocess.run(
            [*command, "--dry-run"], env=env, capture_output=True, text=True, timeout=60
        )
        assert dry.returncode == 0, dry.stderr
        assert "3 missing hourly report(s)" in dry.stderr
        run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        assert "backfill: sent 3" in run.stdout
        assert_billed_once_each(emulator, owed)
        again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
        assert "0 missing hourly report(s)" in again.stderr

    def test_a_canceled_organization_never_recorded_is_not_backfilled(
        self, runtime: Runtime, emulator: StripeEmulator
    ) -> None:
        """No billable hour in the window (history): `backfill --org` says so, sends nothing."""
        make_org("gone", status="canceled")
        run_at(runtime.database, {}, now_hour() - H)
        run = subprocess.run(
            [*SENSORMETER, "backfill", "--since", format_hour(now_hour() - 3 * H), "--org", "gone"],
            env=cli_env(runtime.settings),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 1
        assert "billable history has it billable at no hour of the window" in run.stderr
        assert emulator.events() == []


class TestOutage:
    def test_hours_no_run_recorded_follow_who_is_billable_now(
        self, runtime: Runtime, emulator: StripeEmulator
    ) -> None:
        """Scheduler down h-3..h-1: billable now is caught up; canceled meanwhile is not."""
        h = now_hour()
        for org in ("stays", "gone"):
            make_org(org)
            add_sensor(org, h - 10 * H)
        reporter = runtime.reporter()
        for k in (5, 4):
            run_at(runtime.database, {"stays": "cus_stays", "gone": "cus_gone"}, h - k * H)
            reporter.run(runtime.database, ["stays", "gone"], Report.hourly(h - k * H))
        set_status("gone", "canceled")  # at some hour of the outage: nobody recorded which
        catch_up()
        work(runtime)
        sent = sorted((e.customer, e.identifier) for e in emulator.events())
        assert sent == sorted(
            [
                ("cus_stays", ledger.hourly_identifier("stays", EVENT, h - k * H))
                for k in range(1, 6)
            ]
            + [("cus_gone", ledger.hourly_identifier("gone", EVENT, h - k * H)) for k in (4, 5)]
        )
        assert {e.value for e in emulator.events()} == {1}


class TestFinalCountAtCancellation:
    def test_a_cancellation_handler_must_let_its_report_run_before_recording_it(
        self, runtime: Runtime, emulator: StripeEmulator
    ) -> None:
        """enqueue_sensor_report, then the cancellation: sent if its job ran first, else skipped."""
        from sensormeter import enqueue_sensor_report
        from sensormeter.logs import capture_logs

        make_org("first", active=4)
        make_org("late", active=6)
        report_all_sensor_counts()  # the hour's reports: 4 and 6
        work(runtime)
        Sensor.insert_many(  # changes after the hourly report, before the cancellation
            [("first", True), ("late", True)], fields=[Sensor.organization, Sensor.is_active]
        ).execute()
        enqueue_sensor_report("first", settings=runtime.settings, connection=runtime.redis)
        work(runtime)  # the handler waited for the job
        set_status("first", "canceled")
        enqueue_sensor_report("late", settings=runtime.settings, connection=runtime.redis)
        set_status("late", "canceled")  # recorded before the job ran
        with capture_logs() as logs:
            work(runtime)
        values = {
            c: [e.value for e in emulator.events() if e.customer == c]
            for c in ("cus_first", "cus_late")
        }
        assert values == {"cus_first": [4, 5], "cus_late": [6]}
        skipped = [e for e in logs if e.get("event") == "report.skipped"]
        assert [(e["organization_id"], e["reason"]) for e in skipped] == [
            ("late", "subscription status not billable: canceled")
        ]


class TestFanOutRecords:
    def test_the_current_hour_is_recorded_and_a_past_hour_is_not(self, runtime: Runtime) -> None:
        """report-all of the current hour records who is billable; of a past hour, nothing."""
        h = now_hour()
        make_org("a", active=1)
        make_org("b", active=1)
        make_org("gone", status="canceled", active=1)
        past = report_all_sensor_counts(hour=format_hour(h - 2 * H))
        assert past["history_seconds"] is None and BillableInterval.select().count() == 0
        report_all_sensor_counts(hour=format_hour(h))  # report-all --hour of the current hour
        assert history.customers_at(["a", "b", "gone"], h) == {"a": "cus_a", "b": "cus_b"}
        assert history.recorded_runs(h, h) == [(h, h)]

    def test_a_failure_to_record_costs_no_report(
        self, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The second chunk's recording fails: every chunk is still queued, the hour unmarked."""
        from sensormeter.logs import capture_logs
        from sensormeter.tasks.queue import make_queue

        h = now_hour()
        for org in ("a", "b", "c"):
            make_org(org, active=1)
        runtime.settings = runtime.settings.with_overrides(chunk_size=1)
        calls: list[dict[str, str]] = []
        record = history.record

        def flaky(
            database: peewee.Database, customers: dict[str, str], hour: datetime, **kw: int
        ) -> history.Recorded:
            calls.append(dict(customers))
            if len(calls) == 2:
                raise peewee.OperationalError("disk I/O error")
            return record(database, customers, hour, **kw)

        monkeypatch.setattr(history, "record", flaky)
        with capture_logs() as logs:
            result = report_all_sensor_counts()
        assert result["chunks"] == 3 and len(calls) == 2  # no more recording after the failure
        jobs = make_queue(runtime.settings, runtime.redis).get_jobs()
        assert len([j for j in jobs if j.id.startswith("hourly-")]) == 3
        assert [e["event"] for e in logs if e["event"] == "history.record_failed"] == [
            "history.record_failed"
        ]
        assert history.customers_at(["a", "b", "c"], h) == {"a": "cus_a"}
        assert history.recorded_runs(h, h) == []

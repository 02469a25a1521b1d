"""The processor on real databases with the in-memory Stripe twin: idempotency and ledger states."""

from __future__ import annotations

import sys
from datetime import UTC

import peewee
import pytest

from sensormeter import ledger
from sensormeter.errors import ReportsFailed, RetryableReportError
from sensormeter.hours import check_reportable_hour, format_hour, hour_start, parse_hour
from sensormeter.meters import InMemoryMeterClient
from sensormeter.meters.base import Outcome, SendResult
from sensormeter.models import MeterReport, Sensor, utcnow
from sensormeter.report import Report
from sensormeter.reporter import Reporter
from sensormeter.settings import Settings
from sensormeter.usage import DatabaseUsageSource

from .conftest import count_queries
from .factories import make_org

# The current hour: a past one is stamped at its last second, with historical counts.
HOUR = format_hour(hour_start(utcnow()))


@pytest.fixture(autouse=True)
def current_hour(monkeypatch: pytest.MonkeyPatch) -> None:
    """HOUR is the hour each test runs in, so a suite that crosses the top of an hour passes."""
    monkeypatch.setattr(sys.modules[__name__], "HOUR", format_hour(hour_start(utcnow())))


@pytest.fixture
def meter() -> InMemoryMeterClient:
    return InMemoryMeterClient()


@pytest.fixture
def reporter(database: peewee.Database, meter: InMemoryMeterClient) -> Reporter:
    src = DatabaseUsageSource(database, Settings().billable_status_values)
    return Reporter(src, meter, "active_sensors")


def row(org: str) -> MeterReport:
    return MeterReport.get(MeterReport.organization_id == org)


class TestHourly:
    def test_sends_count_and_records_sent(
        self, database: peewee.Database, reporter: Reporter, meter: InMemoryMeterClient
    ) -> None:
        """A billable organization's active count is sent once and the row is 'sent'."""
        make_org("a", active=3, inactive=1, deleted=1)
        result = reporter.run(database, ["a"], Report.hourly(HOUR))
        assert result.statuses == {"a": "sent"}
        [event] = meter.events
        assert (event.customer, event.value, event.event_name) == ("cus_a", 3, "active_sensors")
        assert event.identifier == ledger.hourly_identifier("a", "active_sensors", parse_hour(HOUR))
        r = row("a")
        assert (r.status, r.value, r.attempts, r.kind) == ("sent", 3, 1, "hourly")
        assert event.timestamp == int(r.measured_at.replace(tzinfo=UTC).timestamp())

    def test_running_twice_sends_once(
        self, database: peewee.Database, reporter: Reporter, meter: InMemoryMeterClient
    ) -> None:
        """A second run of the same hour (a job that runs twice) sends nothing new."""
        make_org("a", active=2)
        reporter.run(database, ["a"], Report.hourly(HOUR))
        make_org("b", active=1)
        second = reporter.run(database, ["a", "b"], Report.hourly(HOUR))
        assert [e.customer for e in meter.events] == ["cus_a", "cus_b"]
        assert second.statuses == {"a": "sent", "b": "sent"}
        assert MeterReport.select().count() == 2

    def test_non_billable_gets_no_call(
        self, database: peewee.Database, reporter: Reporter, meter: InMemoryMeterClient
    ) -> None:
        """Unknown, customer-less and canceled organizations are skipped with a reason."""
        make_org("nocus", customer=None, active=2)
        make_org("old", status="canceled", active=2)
        result = reporter.run(database, ["nocus", "old", "ghost"], Report.hourly(HOUR))
        assert meter.attempts == []
        assert set(result.skipped) == {"nocus", "old", "ghost"}
        assert result.skipped["ghost"] == "unknown organization"
        assert MeterReport.select().count() == 0

    def test_query_count_does_not_grow_with_chunk(
        self, database: peewee.Database, reporter: Reporter
    ) -> None:
        """Preparing a chunk of 5 or of 50 organizations takes the same number of SELECTs."""
        for i in range(55):
            make_org(f"o{i:02d}", active=1)
        ids = [f"o{i:02d}" for i in range(55)]
        with count_queries() as small:
            reporter.prepare(database, ids[:5], Report.hourly(HOUR))
        with count_queries() as large:
            reporter.prepare(database, ids[5:], Report.hourly(HOUR))
        assert small.selects == large.selects


class TestFailures:
    def test_retry_reuses_identifier_and_value(
        self, database: peewee.Database, reporter: Reporter, meter: InMemoryMeterClient
    ) -> None:
        """A 429 leaves the row pending; the retry sends the same identifier and value."""
        make_org("a", active=5)
        meter.script = [SendResult(Outcome.RETRYABLE, "RateLimitError: slow down", "req_1", 429)]
        first = reporter.run(database, ["a"], Report.hourly(HOUR), final_attempt=False)
        with pytest.raises(RetryableReportError):
            first.raise_for_retry()
        assert (row("a").status, row("a").last_error) == ("pending", "RateLimitError: slow down")
        make_org("b")  # the count changes between attempts: the stored value is resent
        Sensor.create(organization="a")
        reporter.run(database, ["a"], Report.hourly(HOUR))
        assert meter.attempts[0] == meter.attempts[1]
        assert (row("a").status, row("a").attempts, row("a").value) == ("sent", 2, 5)

    def test_duplicate_identifier_means_delivered(
        self, database: peewee.Database, reporter: Reporter, meter: InMemoryMeterClient
    ) -> None:
        """Stripe's 'event already exists' answer marks the row sent, not failed."""
        make_org("a", active=1)
        meter.script = [
            SendResult(
                Outcome.DUPLICATE, "An event already exists with identifier x.", "req_2", 400
            )
        ]
        reporter.run(database, ["a"], Report.hourly(HOUR)).raise_for_retry()
        assert (row("a").status, row("a").last_error) == ("sent", None)

    def test_rejection_is_permanent_and_isolated(
        self, database: peewee.Database, reporter: Reporter, meter: InMemoryMeterClient
    ) -> None:
        """A 400 marks that row rejected with message and request id; the others are sent."""
        make_org("a", active=1)
        make_org("b", active=2)
        meter.script = [SendResult(Outcome.REJECTED, "No such customer", "req_3", 400)]
        result = reporter.run(database, ["a", "b"], Report.hourly(HOUR))
        result.raise_for_retry()  # rejected is final: nothing to retry
        assert (row("a").status, row("a").last_error, row("a").stripe_request_id) == (
            "rejected",
            "No such customer",
            "req_3",
        )
        assert row("b").status == "sent"
        reporter.run(database, ["a", "b"], Report.hourly(HOUR))
        assert len(meter.attempts) == 2  # the rejected row is never retried

    def test_last_attempt_marks_failed(
        self, database: peewee.Database, reporter: Reporter, meter: InMemoryMeterClient
    ) -> None:
        """When retries are spent, a transient failure leaves the row 'failed' with its reason."""
        make_org("a", active=1)
        meter.script = [SendResult(Outcome.RETRYABLE, "APIError: 503", "req_4", 503)]
        result = reporter.run(database, ["a"], Report.hourly(HOUR), final_attempt=True)
        with pytest.raises(ReportsFailed, match="APIError: 503"):
            result.raise_for_retry()
        assert (row("a").status, row("a").last_error) == ("failed", "APIError: 503")

    def test_failed_row_is_resent_by_a_later_run(
        self, database: peewee.Database, reporter: Reporter, meter: InMemoryMeterClient
    ) -> None:
        """A failed row is sent again (same identifier) when its hour is reported again."""
        make_org("a", active=1)
        meter.script = [SendResult(Outcome.RETRYABLE, "APIConnectionError: down", None, None)]
        reporter.run(database, ["a"], Report.hourly(HOUR), final_attempt=True)
        reporter.run(database, ["a"], Report.hourly(HOUR))
        assert row("a").status == "sent"
        assert meter.attempts[0].identifier == meter.attempts[1].identifier


def test_a_report_needs_what_fixes_its_identifiers() -> None:
    """A report without its hour, request id or period end is a programming error, refused."""
    with pytest.raises(ValueError, match="request id"):
        Report.from_job(None, None)
    with pytest.raises(ValueError, match="needs its hour"):
        Report("hourly")
    with pytest.raises(ValueError, match="unknown kind"):
        Report("weekly", request_id="x")


class TestPastHour:
    def test_late_job_lands_inside_its_hour_with_the_count_then(
        self, database: peewee.Database, reporter: Reporter, meter: InMemoryMeterClient
    ) -> None:
        """A job for an hour that is over is stamped at that hour's last second, counted then."""
        from datetime import timedelta

        past = hour_start(utcnow()) - timedelta(hours=2)
        make_org("a", active=0)
        Sensor.create(organization="a", created_at=past - timedelta(days=1))
        Sensor.create(
            organization="a",
            created_at=past - timedelta(days=1),
            deleted_at=past + timedelta(minutes=90),
        )  # still there at the hour's end
        Sensor.create(
            organization="a",
            created_at=past - timedelta(days=1),
            deleted_at=past + timedelta(minutes=30),
        )  # gone before the end
        Sensor.create(organization="a")  # added now, after the hour: two of them
        Sensor.create(organization="a")
        reporter.run(database, ["a"], Report.hourly(past))
        [event] = meter.events
        last_second = past + timedelta(hours=1) - timedelta(seconds=1)
        assert event.value == 2
        assert event.timestamp == int(last_second.replace(tzinfo=UTC).timestamp())


def test_hours_outside_stripes_window_are_refused() -> None:
    """A future hour, or one older than 35 days, is refused before anything is queued."""
    from datetime import timedelta

    now = utcnow()
    with pytest.raises(ValueError, match="future"):
        check_reportable_hour(format_hour(now + timedelta(hours=1)), now)
    with pytest.raises(ValueError, match="35-day"):
        check_reportable_hour(format_hour(now - timedelta(days=36)), now)
    assert check_reportable_hour(format_hour(now), now) == hour_start(now)


class _BrokenGate:
    """A gate whose every question fails (a bug, or its table unreadable)."""

    def keep_back(self, database: object, rows: object) -> dict[int, object]:
        raise RuntimeError("the gate is broken")

    def observe(self, database: object, rows: object, answers: object) -> None:
        raise RuntimeError("the gate is broken")


def test_a_broken_gate_costs_only_itself(
    database: peewee.Database, meter: InMemoryMeterClient
) -> None:
    """A gate that raises keeps nothing back and learns nothing: the reports go out as they
    would without it, each hour once with its count, and the failure is logged."""
    from sensormeter.logs import capture_logs

    make_org("a", active=4)
    src = DatabaseUsageSource(database, Settings().billable_status_values)
    broken = Reporter(src, meter, "active_sensors", gates=[_BrokenGate()])  # type: ignore[list-item]
    with capture_logs() as logs:
        result = broken.run(database, ["a"], Report.hourly(HOUR))
    assert result.statuses == {"a": "sent"}
    [event] = meter.events
    assert (event.customer, event.value) == ("cus_a", 4)
    assert event.identifier == ledger.hourly_identifier("a", "active_sensors", parse_hour(HOUR))
    assert (row("a").status, row("a").value) == ("sent", 4)
    events = {entry["event"] for entry in logs}
    assert {"gate.keep_back_failed", "gate.observe_failed"} <= events

"""The ledger's bulk paths (PostgreSQL: INSERT ... RETURNING, UPDATE ... FROM unnest), on both
databases: the same rows and the same billing as the row-by-row path they replace."""

from __future__ import annotations

import sys
from datetime import datetime, timedelta

import peewee
import pytest

from sensormeter import ledger
from sensormeter.hours import format_hour, hour_start, parse_hour
from sensormeter.meters import InMemoryMeterClient
from sensormeter.meters.base import Outcome, SendResult
from sensormeter.models import MeterReport, utcnow
from sensormeter.report import Report
from sensormeter.reporter import Reporter
from sensormeter.settings import Settings
from sensormeter.usage import DatabaseUsageSource

from .factories import make_org

HOUR = format_hour(hour_start(utcnow()))


@pytest.fixture(autouse=True)
def current_hour(monkeypatch: pytest.MonkeyPatch) -> None:
    """HOUR is the hour each test runs in, so a suite that crosses the top of an hour passes."""
    monkeypatch.setattr(sys.modules[__name__], "HOUR", format_hour(hour_start(utcnow())))


def new(org: str, value: int, **extra: object) -> ledger.NewReport:
    moment = hour_start(utcnow()) + timedelta(minutes=5)
    fields: dict[str, object] = {
        "organization_id": org,
        "identifier": f"active_sensors-{org}-{HOUR}",
        "customer": f"cus_{org}",
        "value": value,
        "measured_at": moment,
        "kind": MeterReport.HOURLY,
        "period_hour": parse_hour(HOUR),
        **extra,
    }
    return ledger.NewReport(**fields)  # type: ignore[arg-type]


def test_create_pending_returns_the_stored_rows(database: peewee.Database) -> None:
    """New rows come back as stored (ids included); one already there keeps its own value."""
    ledger.create_pending(database, [new("o1", 7)], "active_sensors", "job-0")
    shared = {"event_identifier": "active_sensors-cus_x-e", "event_value": 5, "customer": "cus_x"}
    on_demand = {"kind": MeterReport.ON_DEMAND, "period_hour": None, "identifier": "od-o4"}
    reports = [
        new("o1", 99),
        new("o2", 2, **shared),
        new("o3", 3, **shared),
        new("o4", 4, **on_demand),
    ]
    rows = ledger.create_pending(database, reports, "active_sensors", "job-1")
    assert rows == ledger.find([r.identifier for r in reports])  # what a read-back would give
    assert {r.organization_id: (r.value, r.status, r.attempts) for r in rows.values()} == {
        "o1": (7, "pending", 0),  # the first writer's value: the one that goes out
        "o2": (2, "pending", 0),
        "o3": (3, "pending", 0),
        "o4": (4, "pending", 0),
    }
    assert {
        (r.event_identifier, r.event_value) for r in rows.values() if r.customer == "cus_x"
    } == {("active_sensors-cus_x-e", 5)}
    assert MeterReport.get(MeterReport.identifier == "od-o4").period_hour is None
    assert ledger.create_pending(database, [], "active_sensors", None) == {}


def test_record_attempts_writes_each_outcome(database: peewee.Database) -> None:
    """Every outcome group in one batch: each row gets its own status, count, error, request."""
    orgs = ["sent", "kept", "dup", "retry", "spent", "rejected"]
    rows = ledger.create_pending(database, [new(o, 1) for o in orgs], "active_sensors", None)
    by_org = {row.organization_id: row for row in rows.values()}
    by_org["kept"].stripe_request_id = "req_earlier"  # as an earlier attempt left it
    MeterReport.update(stripe_request_id="req_earlier").where(
        MeterReport.organization_id == "kept"
    ).execute()
    answers = {
        "sent": SendResult(Outcome.DELIVERED, None, "req_1", 200),
        "kept": SendResult(Outcome.DELIVERED),  # no request id: the earlier one stays
        "dup": SendResult(Outcome.DUPLICATE, "An event already exists", "req_3", 400),
        "retry": SendResult(Outcome.RETRYABLE, "APIError: 503 sk_live_abcdef123", "req_4", 503),
        "spent": SendResult(Outcome.RETRYABLE, "APIConnectionError: down", None, None),
        "rejected": SendResult(Outcome.REJECTED, "No such customer", "req_6", 400),
    }
    batch = [by_org[o] for o in orgs]
    statuses = ledger.record_attempts(
        database, batch, [answers[o] for o in orgs], final_attempt=False
    )
    assert statuses == ["sent", "sent", "sent", "pending", "pending", "rejected"]
    ledger.record_attempts(database, [by_org["spent"]], [answers["spent"]], final_attempt=True)
    stored = {
        r.organization_id: (r.status, r.attempts, r.last_error, r.stripe_request_id, r.sent_at)
        for r in MeterReport.select()
    }
    sent_at = stored["sent"][4]
    assert isinstance(sent_at, datetime)
    assert stored == {
        "sent": ("sent", 1, None, "req_1", sent_at),
        "kept": ("sent", 1, None, "req_earlier", sent_at),
        "dup": ("sent", 1, None, "req_3", sent_at),
        "retry": ("pending", 1, "APIError: 503 sk_live_***", "req_4", None),
        "spent": ("failed", 2, "APIConnectionError: down", None, None),
        "rejected": ("rejected", 1, "No such customer", "req_6", None),
    }


def test_a_chunk_with_every_outcome_bills_each_hour_once(database: peewee.Database) -> None:
    """Mixed answers, then a rerun: each billable organization-hour delivered once, with the
    count of the hour stamped inside it; nothing for the non-billable; shared events whole."""
    meter = InMemoryMeterClient()
    source = DatabaseUsageSource(database, Settings().billable_status_values)
    reporter = Reporter(source, meter, "active_sensors")
    counts = {"a": 3, "b": 4, "c": 5, "d": 6}
    for org, n in counts.items():
        make_org(org, active=n)
    make_org("s1", active=1, customer="cus_shared")
    make_org("s2", active=2, customer="cus_shared")
    make_org("gone", status="canceled", active=9)
    orgs = ["a", "b", "c", "d", "gone", "s1", "s2"]
    # In event order (identifiers ascending): a, b, c, d, then the shared customer's event.
    meter.script = [
        SendResult(Outcome.RETRYABLE, "APIError: 503", "req_r", 503),  # a: retried
        SendResult(Outcome.REJECTED, "No such customer", "req_x", 400),  # b: rejected for good
    ]
    first = reporter.run(database, orgs, Report.hourly(HOUR), final_attempt=False)
    assert first.statuses == {
        "a": "pending", "b": "rejected", "c": "sent", "d": "sent", "s1": "sent", "s2": "sent"
    }  # fmt: skip
    assert "gone" in first.skipped
    reporter.run(database, orgs, Report.hourly(HOUR))  # the retry: only "a" goes out again
    assert [e.identifier for e in meter.attempts].count(
        ledger.hourly_identifier("a", "active_sensors", parse_hour(HOUR))
    ) == 2
    delivered = {e.identifier: e for e in meter.events}
    hour_start_ts = int((parse_hour(HOUR) - datetime(1970, 1, 1)).total_seconds())
    for event in delivered.values():
        assert hour_start_ts <= event.timestamp < hour_start_ts + 3600
    assert sorted((e.customer, e.value) for e in delivered.values()) == [
        ("cus_a", 3),
        ("cus_c", 5),
        ("cus_d", 6),
        ("cus_shared", 3),  # one event, the whole customer's count
    ]
    assert len(meter.events) == len(delivered)  # nothing delivered twice
    statuses = {r.organization_id: (r.status, r.attempts) for r in MeterReport.select()}
    assert statuses == {
        "a": ("sent", 2),
        "b": ("rejected", 1),
        "c": ("sent", 1),
        "d": ("sent", 1),
        "s1": ("sent", 1),
        "s2": ("sent", 1),
    }

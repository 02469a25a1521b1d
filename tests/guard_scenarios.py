"""The anomaly guard's test scenarios: deliveries through the real pipeline, and the invariant.

Shared by tests/test_guard.py (holding and recounting) and tests/test_held_cli.py (the
commands, the check, the RQ path).
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

from rq import SimpleWorker
from rq.serializers import JSONSerializer

from sensormeter import ledger
from sensormeter.emulator import StripeEmulator
from sensormeter.hours import hour_start, parse_hour
from sensormeter.models import MeterReport, Sensor, utcnow
from sensormeter.report import Report
from sensormeter.runtime import Runtime
from sensormeter.tasks.queue import JSONJob, make_queue

from .factories import make_org

EVENT = "active_sensors"


def set_active(org: str, count: int) -> None:
    """Make exactly ``count`` of the organization's sensors active (creating some if needed)."""
    Sensor.delete().where(Sensor.organization == org).execute()
    for _ in range(count):
        Sensor.create(organization=org, created_at=utcnow() - timedelta(days=2))


# History hours end this many hours before the current one: the tests' own past hours are the
# few just before it.
HISTORY_GAP = 4


def deliver(runtime: Runtime, org: str, count: int) -> MeterReport:
    """An on-demand report of ``count`` sensors now, sent through the real pipeline."""
    set_active(org, count)
    runtime.reporter().run(runtime.database, [org], Report.on_demand(uuid.uuid4().hex))
    row = (
        MeterReport.select()
        .where(MeterReport.organization_id == org)
        .order_by(MeterReport.id.desc())
        .get()
    )
    assert row.status == MeterReport.SENT, (row.status, row.evidence)
    return row


def history_hours(count: int) -> list[datetime]:
    """``count`` consecutive past hours, oldest first, ending HISTORY_GAP hours ago."""
    last = hour_start(utcnow()) - timedelta(hours=HISTORY_GAP)
    return [last - timedelta(hours=count - 1 - i) for i in range(count)]


def with_history(
    runtime: Runtime, org: str, values: list[int], *, customer: str | None = "default"
) -> None:
    """The organization exists, and its hourly reports of past hours delivered ``values``
    (oldest first), each counted as of its hour's end like any late hourly report."""
    make_org(org, customer=customer)
    for hour, value in zip(history_hours(len(values)), values, strict=True):
        set_active(org, value)
        row = report_hour(runtime, org, hour)
        assert (row.status, row.value) == (MeterReport.SENT, value), (row.status, row.evidence)


def report_hour(runtime: Runtime, org: str, hour: str | datetime) -> MeterReport:
    """Run the hourly report of ``hour`` for one organization; its ledger row."""
    runtime.reporter().run(runtime.database, [org], Report.hourly(hour))
    start = parse_hour(hour) if isinstance(hour, str) else hour
    return MeterReport.get(MeterReport.identifier == ledger.hourly_identifier(org, EVENT, start))


def stripe_values(emulator: StripeEmulator, identifier: str) -> list[int]:
    """The values Stripe received under ``identifier`` (the emulator keeps an identifier once)."""
    return [event.value for event in emulator.events() if event.identifier == identifier]


def assert_billed_once(emulator: StripeEmulator, org: str, hour: str, value: int) -> None:
    """The invariant for one organization-hour: one event, that count, stamped inside the hour;
    its ledger row sent; nothing of the fleet left pending or held."""
    start = parse_hour(hour).replace(tzinfo=UTC)
    identifier = ledger.hourly_identifier(org, EVENT, parse_hour(hour))
    [event] = [e for e in emulator.events() if e.identifier == identifier]
    assert (event.customer, event.value) == (f"cus_{org}", value)
    assert start <= datetime.fromtimestamp(event.timestamp, UTC) < start + timedelta(hours=1)
    row = MeterReport.get(MeterReport.identifier == identifier)
    assert (row.status, row.value) == (MeterReport.SENT, value)
    left = MeterReport.select().where(
        MeterReport.status.in_([MeterReport.PENDING, MeterReport.HELD, MeterReport.FAILED])
    )
    assert list(left) == []


def evidence(row: MeterReport) -> dict[str, object]:
    fresh = MeterReport.get_by_id(row.id)
    facts = json.loads(fresh.evidence)
    assert isinstance(facts, dict)
    return facts


def wait_out(row: MeterReport, minutes: int = 11) -> None:
    """Pretend the recount wait is over: the row was held ``minutes`` ago."""
    MeterReport.update(updated_at=utcnow() - timedelta(minutes=minutes)).where(
        MeterReport.id == row.id
    ).execute()


def work(runtime: Runtime) -> None:
    """Run the reporting queue's jobs in this process until it is empty (a burst worker)."""
    queue = make_queue(runtime.settings, runtime.redis)
    SimpleWorker(
        [queue], connection=runtime.redis, serializer=JSONSerializer, job_class=JSONJob
    ).work(burst=True)

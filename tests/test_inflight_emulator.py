"""A chunk at Stripe latencies far above the loopback's: every event once, sent concurrently."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from sensormeter.emulator import StripeEmulator
from sensormeter.hours import format_hour, hour_start, parse_hour
from sensormeter.ledger import hourly_identifier
from sensormeter.meters import StripeMeterClient
from sensormeter.meters.inflight import START
from sensormeter.models import MeterReport, utcnow
from sensormeter.runtime import Runtime
from sensormeter.tasks.report import process_meter_report

from .factories import make_org

EVENT = "active_sensors"
LATENCY = 0.3  # seconds per request: a distant region, a slow day
BILLABLE = 60
OTHERS = 6


@pytest.mark.integration
def test_a_chunk_at_300_ms_delivers_every_event_once(
    runtime: Runtime, emulator: StripeEmulator
) -> None:
    """The default (auto) window grows past its start at 300 ms; the invariants hold.

    Each billable organization-hour is delivered once, with the hour's count, stamped inside
    the hour; the non-billable get nothing; no row is left pending. One request at a time
    would take BILLABLE x 300 ms; the window keeps many in flight instead.
    """
    assert runtime.settings.max_in_flight == 0  # the default: auto
    for i in range(BILLABLE):
        make_org(f"lat{i:03d}", active=i % 7)
    for i in range(OTHERS):
        make_org(f"gone{i}", status="canceled", active=3)
    orgs = [f"lat{i:03d}" for i in range(BILLABLE)] + [f"gone{i}" for i in range(OTHERS)]
    hour = format_hour(hour_start(utcnow()))
    emulator.set_latency(LATENCY)

    started = time.perf_counter()
    process_meter_report(orgs, hour=hour)
    elapsed = time.perf_counter() - started

    start = parse_hour(hour).replace(tzinfo=UTC)
    events = emulator.events()
    assert len(events) == len({e.identifier for e in events}) == BILLABLE
    by_identifier = {e.identifier: e for e in events}
    for i in range(BILLABLE):
        org = f"lat{i:03d}"
        event = by_identifier[hourly_identifier(org, EVENT, parse_hour(hour))]
        assert (event.customer, event.value) == (f"cus_{org}", i % 7)
        assert start <= datetime.fromtimestamp(event.timestamp, UTC) < start + timedelta(hours=1)
    assert not any(e.customer.startswith("cus_gone") for e in events)
    rows = list(MeterReport.select())
    assert {r.status for r in rows} == {MeterReport.SENT} and len(rows) == BILLABLE
    assert elapsed < BILLABLE * LATENCY / 4  # concurrent, not one by one
    meter = runtime.meter
    assert isinstance(meter, StripeMeterClient) and meter.in_flight.size > START

    # Run again (RQ retrying the job): nothing new reaches Stripe.
    process_meter_report(orgs, hour=hour)
    assert len(emulator.events()) == BILLABLE

"""Silent money losses found by attacking the pipeline, each now costing only itself.

Each test runs the real pipeline (worker processes, a private Redis, the HTTP emulator) and
ends on the billing invariants.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import redis

from sensormeter.emulator import StripeEmulator
from sensormeter.hours import parse_hour
from sensormeter.ledger import customer_hourly_identifier
from sensormeter.models import MeterReport, Sensor, Subscription
from sensormeter.settings import Settings
from sensormeter.tasks.fanout import enqueue_fanout

from .conftest import assert_billed_exactly_once, current_hour, run_cli, seed

LATIN1_PAGE = "<html><h1>502 Bad Gateway</h1><p>Passerelle défaillante</p></html>"


def fan_out_and_drain(settings: Settings, hour: str) -> None:
    """Queue the hour's fan-out and run two burst workers until nothing is left."""
    enqueue_fanout(settings, redis.Redis.from_url(settings.redis_url), hour)
    done = run_cli(settings, "worker", "-n", "2", "--burst", timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]


def assert_billed_per_customer(
    emulator: StripeEmulator, expected: dict[str, int], hour: str
) -> None:
    """Per Stripe customer: exactly one event stamped inside the hour, valued at the sum."""
    start = parse_hour(hour).replace(tzinfo=UTC)
    found: dict[str, list[int]] = {}
    for event in emulator.events():
        moment = datetime.fromtimestamp(event.timestamp, UTC)
        assert start <= moment < start + timedelta(hours=1), event
        found.setdefault(event.customer, []).append(event.value)
    assert found == {customer: [value] for customer, value in expected.items()}
    assert {r.status for r in MeterReport.select()} == {"sent"}


def test_one_malformed_host_id_costs_only_itself(
    fault_settings: Settings, fault_db: object, emulator: StripeEmulator
) -> None:
    """A host id "org002\\n" is skipped; every other organization is billed once, on time."""
    customers = seed(12)
    settings = replace(fault_settings, usage_source="tests.host_source:poisoned_source")
    hour = current_hour()
    fan_out_and_drain(settings, hour)
    assert_billed_exactly_once(emulator, customers, hour)
    assert all("\n" not in e.identifier for e in emulator.events())
    status = run_cli(settings, "status")
    assert "'org002\\n'" in status.stdout, status.stdout  # visible, not one log line only


def test_a_proxy_error_page_in_latin1_heals_into_one_event_per_hour(
    fault_settings: Settings, fault_db: object, emulator: StripeEmulator
) -> None:
    """502s whose body is not UTF-8 fail their own events only; the retries deliver them."""
    customers = seed(12)
    emulator.inject_page(502, LATIN1_PAGE.encode("latin-1"), times=6)
    hour = current_hour()
    fan_out_and_drain(fault_settings, hour)
    assert_billed_exactly_once(emulator, customers, hour)


def test_organizations_sharing_a_customer_are_billed_their_sum_once(
    fault_settings: Settings, fault_db: object, emulator: StripeEmulator
) -> None:
    """Chunks of 5 split two shared customers across jobs: each still gets one summed event."""
    customers = seed(12)
    shared = {"cus_pair": ["org003", "org006"], "cus_trio": ["org004", "org005", "org009"]}
    for customer, orgs in shared.items():
        Subscription.update(stripe_customer_id=customer).where(
            Subscription.organization_id.in_(orgs)  # type: ignore[attr-defined]
        ).execute()
        for org in orgs:
            customers[org] = customer
    counts = {org: Sensor.select().where(Sensor.organization == org).count() for org in customers}
    expected: dict[str, int] = {}
    for org, customer in customers.items():
        expected[customer] = expected.get(customer, 0) + counts[org]
    hour = current_hour()
    fan_out_and_drain(fault_settings, hour)
    assert_billed_per_customer(emulator, expected, hour)
    for customer in shared:
        identifier = customer_hourly_identifier(customer, "active_sensors", parse_hour(hour))
        assert [e.identifier for e in emulator.events() if e.customer == customer] == [identifier]
    rows = {r.organization_id: r for r in MeterReport.select()}
    assert sorted(rows) == sorted(customers)  # one row per organization: its part
    assert all(rows[o].value == counts[o] for o in customers)

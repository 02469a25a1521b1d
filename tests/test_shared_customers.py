"""Organizations that share a Stripe customer: one event per customer, the sum of their counts.

Stripe meters aggregate per customer; two organizations sending their own counts to one
customer in the same second leave Stripe with one of the two values. Each organization keeps
its own ledger row (its part); the customer gets one event whose value is the sum.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import peewee
import pytest

from sensormeter import ledger
from sensormeter.hours import format_hour, hour_start, parse_hour
from sensormeter.meters import InMemoryMeterClient
from sensormeter.models import MeterReport, Organization, Subscription, utcnow
from sensormeter.report import Report
from sensormeter.reporter import Reporter
from sensormeter.settings import Settings
from sensormeter.usage import DatabaseUsageSource, InMemoryUsageSource

from .factories import make_org

HOUR = format_hour(hour_start(utcnow()))


@pytest.fixture(autouse=True)
def current_hour(monkeypatch: pytest.MonkeyPatch) -> None:
    """HOUR is the hour each test runs in, so a suite that crosses the top of an hour passes."""
    monkeypatch.setattr(sys.modules[__name__], "HOUR", format_hour(hour_start(utcnow())))


EVENT = "active_sensors"


def rows_by_org() -> dict[str, MeterReport]:
    return {r.organization_id: r for r in MeterReport.select()}


def assert_one_event_per_customer_hour(
    meter: InMemoryMeterClient, expected: dict[str, int], hour: str
) -> None:
    """The billing invariant per customer: one event in the hour, whose value is the sum."""
    start = parse_hour(hour).replace(tzinfo=UTC)
    by_customer: dict[str, list[int]] = {}
    for event in meter.events:
        moment = datetime.fromtimestamp(event.timestamp, UTC)
        assert start <= moment < start + timedelta(hours=1), event
        by_customer.setdefault(event.customer, []).append(event.value)
    assert by_customer == {c: [v] for c, v in expected.items()}


class TestIdentifiers:
    def test_identifiers_are_pinned_byte_for_byte(self) -> None:
        """Alone keeps today's identifiers; a shared customer's are its own, never an org's."""
        hour = datetime(2026, 11, 29, 4)
        assert ledger.hourly_identifier("acme", EVENT, hour) == "active_sensors-acme-2026-11-29T04"
        assert ledger.on_demand_identifier("acme", EVENT, "abc123") == "active_sensors-acme-rabc123"
        assert (
            ledger.on_demand_identifier("acme", EVENT, "close-20261201T000000")
            == "active_sensors-acme-rclose-20261201T000000"
        )
        assert (
            ledger.customer_hourly_identifier("cus_X1", EVENT, hour)
            == "active_sensors+cus_X1-2026-11-29T04"
        )
        assert (
            ledger.customer_request_identifier("cus_X1", EVENT, "abc123")
            == "active_sensors+cus_X1-rabc123"
        )
        long = ledger.customer_hourly_identifier("cus_" + "x" * 100, EVENT, hour)
        assert long.startswith("sm-") and len(long) <= 100


class TestInMemory:
    def source(self) -> InMemoryUsageSource:
        return InMemoryUsageSource(
            {"a": "cus_x", "b": "cus_x", "c": "cus_c", "z": ""},
            {"a": 10, "b": 1, "c": 4, "z": 7},
        )

    def test_hourly_sends_one_event_per_customer_with_the_sum(
        self, database: peewee.Database
    ) -> None:
        """Chunks holding a and b separately still send cus_x one event of 11, once."""
        meter = InMemoryMeterClient()
        reporter = Reporter(self.source(), meter, EVENT)
        first = reporter.run(database, ["a", "c"], Report.hourly(HOUR))
        second = reporter.run(database, ["b"], Report.hourly(HOUR))
        assert first.statuses == {"a": "sent", "b": "sent", "c": "sent"}
        assert second.statuses == {"b": "sent"}
        assert_one_event_per_customer_hour(meter, {"cus_x": 11, "cus_c": 4}, HOUR)
        shared = next(e for e in meter.events if e.customer == "cus_x")
        period = parse_hour(HOUR)
        assert shared.identifier == ledger.customer_hourly_identifier("cus_x", EVENT, period)
        alone = next(e for e in meter.events if e.customer == "cus_c")
        assert alone.identifier == ledger.hourly_identifier("c", EVENT, period)
        rows = rows_by_org()
        assert (rows["a"].value, rows["b"].value) == (10, 1)  # each organization's part
        assert {rows["a"].event_value, rows["b"].event_value} == {11}
        assert rows["a"].event_identifier == rows["b"].event_identifier == shared.identifier
        assert rows["c"].event_identifier is None and rows["c"].event_value is None

    def test_on_demand_report_of_one_organization_bills_its_customer_sum(
        self, database: peewee.Database
    ) -> None:
        """enqueue_sensor_report(b) sends cus_x the sum, under a customer request identifier."""
        meter = InMemoryMeterClient()
        Reporter(self.source(), meter, EVENT).run(database, ["b"], Report.on_demand("r1"))
        [event] = meter.events
        assert (event.customer, event.value) == ("cus_x", 11)
        assert event.identifier == ledger.customer_request_identifier("cus_x", EVENT, "r1")
        assert {r.kind for r in MeterReport.select()} == {"on_demand"}

    def test_an_organization_joining_after_the_event_was_fixed_goes_out_in_it(
        self, database: peewee.Database
    ) -> None:
        """The hour's event of cus_x cannot change: a newcomer's row joins it as a duplicate."""
        source = self.source()
        meter = InMemoryMeterClient()
        Reporter(source, meter, EVENT).run(database, ["a"], Report.hourly(HOUR))
        source.customers["n"] = "cus_x"
        source.counts["n"] = 5
        result = Reporter(source, meter, EVENT).run(database, ["n"], Report.hourly(HOUR))
        assert result.statuses == {"a": "sent", "b": "sent", "n": "sent"}
        assert_one_event_per_customer_hour(meter, {"cus_x": 11}, HOUR)
        newcomer = rows_by_org()["n"]
        assert (newcomer.value, newcomer.event_value) == (5, 11)
        assert newcomer.measured_at == rows_by_org()["a"].measured_at

    def test_blank_customer_is_not_billable(self, database: peewee.Database) -> None:
        """A customer id of spaces from a host source is skipped with its reason, never sent."""

        class HostSource(InMemoryUsageSource):
            def billable_customers(self, organization_ids: Sequence[str]) -> dict[str, str]:
                return {o: "   " for o in organization_ids}  # a host's unchecked column

        source = HostSource({"s": "cus_s"}, {"s": 3})
        meter = InMemoryMeterClient()
        result = Reporter(source, meter, EVENT).run(database, ["s"], Report.hourly(HOUR))
        assert "blank Stripe customer id" in result.skipped["s"]
        assert meter.attempts == [] and MeterReport.select().count() == 0

    def test_source_without_lookup_groups_the_organizations_at_hand(
        self, database: peewee.Database
    ) -> None:
        """A host source lacking organizations_of_customers still sums a chunk's shared orgs."""

        class OldSource(InMemoryUsageSource):
            organizations_of_customers = None  # type: ignore[assignment]

        meter = InMemoryMeterClient()
        source = OldSource({"a": "cus_x", "b": "cus_x"}, {"a": 10, "b": 1})
        Reporter(source, meter, EVENT).run(database, ["a", "b"], Report.hourly(HOUR))
        assert_one_event_per_customer_hour(meter, {"cus_x": 11}, HOUR)


class TestDatabaseSource:
    def seed(self) -> None:
        make_org("a", customer="cus_x", active=10)
        make_org("b", customer="cus_x", active=1)
        make_org("c", customer="cus_c", active=4)
        make_org("d", customer="cus_x", status="canceled", active=50)  # not billable

    def test_organizations_of_customers_agrees_with_billable_customers(
        self, database: peewee.Database
    ) -> None:
        """Only billable organizations count under a customer, by their newest subscription."""
        self.seed()
        make_org("m", customer="cus_old", active=2)
        Subscription.create(organization="m", status="active", stripe_customer_id="cus_x")
        source = DatabaseUsageSource(database, Settings().billable_status_values)
        found = source.organizations_of_customers(["cus_x", "cus_old", "cus_none"])
        assert found == {"cus_x": ["a", "b", "m"]}
        assert source.customers_with_several_subscriptions() == {"cus_x": 3}

    def test_every_chunk_layout_bills_each_customer_hour_once_with_its_sum(
        self, database: peewee.Database
    ) -> None:
        """However the fan-out chunks the fleet, each customer gets one event: its sum."""
        self.seed()
        meter = InMemoryMeterClient()
        source = DatabaseUsageSource(database, Settings().billable_status_values)
        for chunk in (["a"], ["b", "c"], ["d"], ["a", "b", "c"]):
            Reporter(source, meter, EVENT).run(database, chunk, Report.hourly(HOUR))
        assert_one_event_per_customer_hour(meter, {"cus_x": 11, "cus_c": 4}, HOUR)
        assert sorted(rows_by_org()) == ["a", "b", "c"]  # nothing for the canceled one
        assert {r.status for r in MeterReport.select()} == {"sent"}


@pytest.mark.integration
class TestOverHttp:
    def test_shared_customer_over_the_emulator_and_reconcile(
        self, runtime: object, emulator: object, database: peewee.Database
    ) -> None:
        """Through stripe-python and the emulator, reconcile compares per customer: clean."""
        from sensormeter.reconcile import reconcile
        from sensormeter.tasks.report import process_meter_report

        make_org("a", customer="cus_x", active=10)
        make_org("b", customer="cus_x", active=1)
        process_meter_report(["a"], hour=HOUR)
        process_meter_report(["b"], hour=HOUR)
        events = [e for e in emulator.events() if e.customer == "cus_x"]  # type: ignore[attr-defined]
        assert [(e.value, e.identifier) for e in events] == [
            (11, ledger.customer_hourly_identifier("cus_x", EVENT, parse_hour(HOUR)))
        ]
        start = parse_hour(HOUR)
        settings = runtime.settings  # type: ignore[attr-defined]
        result = reconcile(settings, start, start + timedelta(hours=1))
        assert result.clean, [m.describe() for m in result.mismatches]
        assert Organization.select().count() == 2

"""Blank customer ids are not billable, and an hour's count is the same read now or later."""

from __future__ import annotations

from datetime import timedelta

import peewee
import pytest

from sensormeter import report_all_sensor_counts
from sensormeter.emulator import StripeEmulator
from sensormeter.hours import format_hour, parse_hour
from sensormeter.models import Sensor, utcnow
from sensormeter.runtime import Runtime
from sensormeter.settings import Settings
from sensormeter.usage import DatabaseUsageSource, InMemoryUsageSource

from .factories import make_org
from .faults.conftest import assert_billed_exactly_once
from .test_jobs import work

BLANK_CUSTOMERS = ["   ", "\t", " \n "]


def source() -> DatabaseUsageSource:
    return DatabaseUsageSource(peewee.Proxy(), Settings().billable_status_values)


class TestBlankCustomer:
    @pytest.mark.parametrize("customer", BLANK_CUSTOMERS)
    def test_not_billable_in_the_database(self, database: peewee.Database, customer: str) -> None:
        """A customer id that is blank after trimming makes an organization not billable."""
        make_org("blank", customer=customer, active=2)
        make_org("good", active=1)
        src = source()
        assert src.billable_organization_ids(None, 10) == ["good"]
        assert src.billable_customers(["blank", "good"]) == {"good": "cus_good"}
        assert "no Stripe customer" in src.explain_not_billable("blank")

    @pytest.mark.parametrize("customer", BLANK_CUSTOMERS)
    def test_not_billable_in_memory(self, customer: str) -> None:
        """The in-memory twin agrees with the database source."""
        src = InMemoryUsageSource({"blank": customer, "good": "cus_good"})
        assert src.billable_organization_ids(None, 10) == ["good"]
        assert src.billable_customers(["blank", "good"]) == {"good": "cus_good"}

    def test_hourly_run_bills_only_the_real_customer(
        self, runtime: Runtime, emulator: StripeEmulator
    ) -> None:
        """The hourly run sends nothing for the blank customer and one event for the other."""
        make_org("blank", customer="   ", active=2)
        make_org("good", active=1)
        hour = format_hour(utcnow())
        report_all_sensor_counts(hour)
        work(runtime)
        assert_billed_exactly_once(emulator, {"good": "cus_good"}, hour)


class TestCountsAgree:
    def test_sensor_created_in_the_future_does_not_count_yet(
        self, database: peewee.Database
    ) -> None:
        """The count read now equals the count as of now: a future created_at counts in neither."""
        make_org("acme", active=2)
        Sensor.create(organization="acme", created_at=utcnow() + timedelta(days=1))
        src = source()
        now = utcnow()
        assert src.count_active_sensors(["acme"]) == {"acme": 2}
        assert src.count_active_sensors_at(["acme"], now) == {"acme": 2}

    def test_on_time_and_late_reports_of_an_hour_send_the_same_count(
        self, runtime: Runtime, emulator: StripeEmulator
    ) -> None:
        """An hour reported on time and the same hour read afterwards give one count."""
        make_org("acme", active=3)
        Sensor.create(organization="acme", created_at=utcnow() + timedelta(hours=3))
        hour = format_hour(utcnow())
        report_all_sensor_counts(hour)
        work(runtime)
        assert_billed_exactly_once(emulator, {"acme": "cus_acme"}, hour)
        [event] = emulator.events()
        end_of_hour = parse_hour(hour) + timedelta(hours=1) - timedelta(seconds=1)
        later = runtime.source.count_active_sensors_at(["acme"], end_of_hour)  # type: ignore[attr-defined]
        assert event.value == later["acme"] == 3

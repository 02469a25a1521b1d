"""The emulator's deleted customers and archived meters, spoken to by stripe-python.

As on Stripe, an event for a deleted customer or an archived meter is accepted on the request
and refused later, in the error report of a thin ``v1.billing.meter.error_report_triggered``.
"""

from __future__ import annotations

import json
import time
import urllib.request

import pytest
import stripe

from sensormeter.emulator import StripeEmulator


def client(e: StripeEmulator) -> stripe.StripeClient:
    return stripe.StripeClient(
        "sk_test_refusals",
        base_addresses={"api": e.base_url, "meter_events": e.base_url},
        max_network_retries=0,
        http_client=stripe.RequestsClient(timeout=5),
    )


def send(c: stripe.StripeClient, identifier: str, customer: str) -> None:
    c.v1.billing.meter_events.create(
        params={
            "event_name": "active_sensors",
            "identifier": identifier,
            "timestamp": int(time.time()),
            "payload": {"stripe_customer_id": customer, "value": "3"},
        }
    )


class TestCustomers:
    def test_any_customer_exists_until_deleted_then_again_when_restored(
        self, emulator: StripeEmulator
    ) -> None:
        """GET /v1/customers/{id}: found; deleted: true; 404 when purged; found again."""
        c = client(emulator)
        assert c.v1.customers.retrieve("cus_a").id == "cus_a"
        emulator.delete_customer("cus_a")
        assert c.v1.customers.retrieve("cus_a").deleted is True
        emulator.delete_customer("cus_a", purge=True)
        with pytest.raises(stripe.InvalidRequestError) as caught:
            c.v1.customers.retrieve("cus_a")
        assert (caught.value.http_status, caught.value.code) == (404, "resource_missing")
        emulator.restore_customer("cus_a")
        assert not getattr(c.v1.customers.retrieve("cus_a"), "deleted", False)


class TestErrorReports:
    def test_a_deleted_customers_event_is_accepted_then_reported(
        self, emulator: StripeEmulator
    ) -> None:
        """200 on the request, no aggregation, then one error report naming its identifier."""
        c = client(emulator)
        emulator.delete_customer("cus_gone")
        send(c, "ev-gone", "cus_gone")
        send(c, "ev-fine", "cus_fine")
        assert [e.identifier for e in emulator.events()] == ["ev-fine"]
        notification = emulator.error_report("evt_test_1")
        assert notification is not None and "data" not in notification
        event = c.v2.core.events.retrieve("evt_test_1").to_dict()
        [error_type] = event["data"]["reason"]["error_types"]
        assert error_type["code"] == "meter_event_customer_not_found"
        assert [s["request"]["identifier"] for s in error_type["sample_errors"]] == ["ev-gone"]
        assert emulator.error_report() is None  # nothing new refused since

    def test_an_archived_meter_refuses_everything_and_lists_as_inactive(
        self, emulator: StripeEmulator
    ) -> None:
        """archived_meter for every event; the meter list says inactive until reactivated."""
        c = client(emulator)
        emulator.archive_meter("active_sensors")
        send(c, "ev-1", "cus_a")
        assert emulator.events() == []
        [refused] = emulator.refused_events()
        assert refused.code == "archived_meter"
        [meter] = c.v1.billing.meters.list().data
        assert meter.status == "inactive"
        emulator.reactivate_meter("active_sensors")
        assert c.v1.billing.meters.list().data[0].status == "active"
        send(c, "ev-2", "cus_a")
        assert [e.identifier for e in emulator.events()] == ["ev-2"]

    def test_another_process_asks_for_the_report_over_http(self, emulator: StripeEmulator) -> None:
        """POST /_emulator/error_report returns the thin notification ({} when none is due)."""
        c = client(emulator)
        emulator.delete_customer("cus_gone")
        send(c, "ev-gone", "cus_gone")
        url = f"{emulator.base_url}/_emulator/error_report"
        with urllib.request.urlopen(urllib.request.Request(url, method="POST")) as answer:
            notification = json.loads(answer.read())
        assert notification["type"] == "v1.billing.meter.error_report_triggered"
        assert c.v2.core.events.retrieve(notification["id"]).id == notification["id"]
        with urllib.request.urlopen(urllib.request.Request(url, method="POST")) as answer:
            assert json.loads(answer.read()) == {}

"""examples/fastapi: the endpoints queue the right report job and the webhook view takes only
signed deliveries, each blocking call made off the event loop; SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime
from types import ModuleType
from typing import TYPE_CHECKING, Any

import peewee
import pytest
import redis

from sensormeter.emulator import StripeEmulator
from sensormeter.ledger import hourly_identifier
from sensormeter.models import MODELS, MeterReport, Organization, Sensor, Subscription
from sensormeter.settings import Settings

from ..test_webhook import ledger_row
from .common import (
    REJECTION,
    REPORT_JOB,
    WEBHOOK_SECRET,
    error_report,
    framework,
    ledger,
    load_example,
    queued_reports,
    run_worker,
    signature,
)

if TYPE_CHECKING:
    from fastapi.testclient import TestClient

HOUR = datetime(2026, 11, 29, 4)


@pytest.fixture
def example() -> ModuleType:
    """examples/fastapi/app.py, imported afresh."""
    return load_example("fastapi/app.py", "fastapi_example_app")


@pytest.fixture
def client(
    example: ModuleType, settings: Settings, database: peewee.Database, redis_conn: redis.Redis
) -> Iterator[TestClient]:
    """The example app on the test services, with acme (active, 2 sensors) and stark
    (canceled) in the default tables."""
    Organization.create(id="acme")
    Subscription.create(organization="acme", status="active", stripe_customer_id="cus_acme")
    Sensor.create(organization="acme")
    Sensor.create(organization="acme")
    Organization.create(id="stark")
    Subscription.create(organization="stark", status="canceled", stripe_customer_id="cus_stark")
    # Imported here, not at collection: FastAPI takes a second to import.
    testclient = framework("fastapi.testclient")
    app = example.create_app(replace(settings, stripe_webhook_secret=WEBHOOK_SECRET))
    with testclient.TestClient(app) as test_client:
        yield test_client
    database.bind(MODELS)  # create_app bound the models to its own database object


def on_the_loop(example: ModuleType, name: str, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Wrap the example's ``name``; each call appends whether it ran on an event loop's thread."""
    calls: list[bool] = []
    real: Callable[..., Any] = getattr(example, name)

    def recorded(*args: Any, **kwargs: Any) -> Any:
        try:
            asyncio.get_running_loop()
            calls.append(True)
        except RuntimeError:  # no loop runs in this thread: a worker thread
            calls.append(False)
        return real(*args, **kwargs)

    monkeypatch.setattr(example, name, recorded)
    return calls


class TestSensorChange:
    """POST and DELETE on sensors queue the organization's report, and it bills the count."""

    def test_adding_a_sensor_queues_a_report_job(
        self, client: TestClient, settings: Settings, redis_conn: redis.Redis
    ) -> None:
        """201 with the job id; the queue holds that process_meter_report job for acme."""
        answer = client.post("/organizations/acme/sensors")
        assert answer.status_code == 201
        job_id = answer.json()["report_job"]
        assert queued_reports(settings, redis_conn) == [(job_id, REPORT_JOB, ["acme"])]

    def test_enqueue_runs_off_the_event_loop(
        self, client: TestClient, example: ModuleType, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The Redis call is made in a worker thread, not on the loop's thread."""
        calls = on_the_loop(example, "enqueue_sensor_report", monkeypatch)
        assert client.post("/organizations/acme/sensors").status_code == 201
        assert client.delete("/organizations/acme/sensors/1").status_code == 200
        assert calls == [False, False]

    def test_unknown_organization_queues_nothing(
        self, client: TestClient, settings: Settings, redis_conn: redis.Redis
    ) -> None:
        """404, and no job."""
        assert client.post("/organizations/nobody/sensors").status_code == 404
        assert queued_reports(settings, redis_conn) == []

    def test_worker_sends_the_count_after_the_change(
        self,
        client: TestClient,
        settings: Settings,
        redis_conn: redis.Redis,
        emulator: StripeEmulator,
    ) -> None:
        """Add one, remove one: the report carries acme's 2 sensors; canceled stark's change
        queues a job that bills nothing."""
        added = client.post("/organizations/acme/sensors").json()
        removed = client.delete(f"/organizations/acme/sensors/{added['sensor_id']}")
        assert removed.status_code == 200
        assert removed.json()["report_job"] == added["report_job"]  # still waiting: one job
        assert client.post("/organizations/stark/sensors").status_code == 201
        assert len(queued_reports(settings, redis_conn)) == 2

        run_worker(settings)

        assert ledger() == {"acme": ("sent", 2, "cus_acme")}
        assert [(e.customer, e.value) for e in emulator.events()] == [("cus_acme", 2)]


class TestWebhookView:
    """POST /stripe/meter-errors."""

    def test_signed_error_report_marks_the_row_rejected(
        self, client: TestClient, settings: Settings, emulator: StripeEmulator
    ) -> None:
        """A correctly signed delivery: 200, and the named row becomes rejected."""
        identifier = hourly_identifier("acme", settings.meter_event_name, HOUR)
        ledger_row("acme", identifier)
        body = error_report(emulator, identifier)
        answer = client.post(
            "/stripe/meter-errors", content=body, headers={"Stripe-Signature": signature(body)}
        )
        assert (answer.status_code, answer.json()) == (200, {"handled": True, "rows_marked": 1})
        row = MeterReport.get(MeterReport.identifier == identifier)
        assert row.status == "rejected" and REJECTION in row.last_error

    def test_stripe_call_runs_off_the_event_loop(
        self,
        client: TestClient,
        example: ModuleType,
        settings: Settings,
        emulator: StripeEmulator,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """handle_stripe_webhook (the Stripe fetch, the ledger update) runs in a worker thread."""
        calls = on_the_loop(example, "handle_stripe_webhook", monkeypatch)
        identifier = hourly_identifier("acme", settings.meter_event_name, HOUR)
        ledger_row("acme", identifier)
        body = error_report(emulator, identifier)
        answer = client.post(
            "/stripe/meter-errors", content=body, headers={"Stripe-Signature": signature(body)}
        )
        assert answer.status_code == 200
        assert calls == [False]

    def test_bad_signature_is_refused(
        self, client: TestClient, settings: Settings, emulator: StripeEmulator
    ) -> None:
        """Signed with another secret: 400, and the row stays sent."""
        identifier = hourly_identifier("acme", settings.meter_event_name, HOUR)
        ledger_row("acme", identifier)
        body = error_report(emulator, identifier)
        answer = client.post(
            "/stripe/meter-errors",
            content=body,
            headers={"Stripe-Signature": signature(body, secret="whsec_someone_else")},
        )
        assert answer.status_code == 400
        assert "signature" in answer.json()["error"]
        assert MeterReport.get(MeterReport.identifier == identifier).status == "sent"

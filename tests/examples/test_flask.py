"""examples/flask: the sensor-change endpoints queue the right report job, the worker sends
the right count, and the webhook view takes only signed deliveries; SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING

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
    from flask.testing import FlaskClient
HOUR = datetime(2026, 11, 29, 4)


@pytest.fixture
def client(
    settings: Settings, database: peewee.Database, redis_conn: redis.Redis
) -> Iterator[FlaskClient]:
    """The example app on the test database, Redis and emulator, with acme (active, 2
    sensors) and stark (canceled) in the default tables."""
    Organization.create(id="acme")
    Subscription.create(organization="acme", status="active", stripe_customer_id="cus_acme")
    Sensor.create(organization="acme")
    Sensor.create(organization="acme")
    Organization.create(id="stark")
    Subscription.create(organization="stark", status="canceled", stripe_customer_id="cus_stark")
    framework("flask")
    app = load_example("flask/app.py", "flask_example_app").create_app(
        replace(settings, stripe_webhook_secret=WEBHOOK_SECRET)
    )
    yield app.test_client()
    app_database = app.extensions["sensormeter"]["database"]
    if not app_database.is_closed():
        app_database.close()
    database.bind(MODELS)  # create_app bound the models to its own database object


class TestSensorChange:
    """POST and DELETE on sensors queue the organization's report, and it bills the count."""

    def test_adding_a_sensor_queues_a_report_job(
        self, client: FlaskClient, settings: Settings, redis_conn: redis.Redis
    ) -> None:
        """201 with the job id; the queue holds that process_meter_report job for acme."""
        answer = client.post("/organizations/acme/sensors")
        assert answer.status_code == 201
        job_id = answer.get_json()["report_job"]
        assert queued_reports(settings, redis_conn) == [(job_id, REPORT_JOB, ["acme"])]

    def test_unknown_organization_queues_nothing(
        self, client: FlaskClient, settings: Settings, redis_conn: redis.Redis
    ) -> None:
        """404, and no job."""
        assert client.post("/organizations/nobody/sensors").status_code == 404
        assert queued_reports(settings, redis_conn) == []

    def test_worker_sends_the_count_after_the_change(
        self,
        client: FlaskClient,
        settings: Settings,
        redis_conn: redis.Redis,
        emulator: StripeEmulator,
    ) -> None:
        """Add one, remove one: the report sent carries acme's 2 sensors; canceled stark's
        change queues a job that bills nothing."""
        added = client.post("/organizations/acme/sensors").get_json()
        removed = client.delete(f"/organizations/acme/sensors/{added['sensor_id']}")
        assert removed.status_code == 200
        assert removed.get_json()["report_job"] == added["report_job"]  # still waiting: one job
        Sensor.create(organization="stark")
        assert client.post("/organizations/stark/sensors").status_code == 201
        assert len(queued_reports(settings, redis_conn)) == 2

        run_worker(settings)

        assert ledger() == {"acme": ("sent", 2, "cus_acme")}
        assert [(e.customer, e.value) for e in emulator.events()] == [("cus_acme", 2)]


class TestWebhookView:
    """POST /stripe/meter-errors."""

    def test_signed_error_report_marks_the_row_rejected(
        self, client: FlaskClient, settings: Settings, emulator: StripeEmulator
    ) -> None:
        """A correctly signed delivery: 200, and the named row becomes rejected."""
        identifier = hourly_identifier("acme", settings.meter_event_name, HOUR)
        ledger_row("acme", identifier)
        body = error_report(emulator, identifier)
        answer = client.post(
            "/stripe/meter-errors", data=body, headers={"Stripe-Signature": signature(body)}
        )
        assert (answer.status_code, answer.get_json()) == (
            200,
            {"handled": True, "rows_marked": 1},
        )
        row = MeterReport.get(MeterReport.identifier == identifier)
        assert row.status == "rejected" and REJECTION in row.last_error

    def test_bad_signature_is_refused(
        self, client: FlaskClient, settings: Settings, emulator: StripeEmulator
    ) -> None:
        """Signed with another secret: 400, and the row stays sent."""
        identifier = hourly_identifier("acme", settings.meter_event_name, HOUR)
        ledger_row("acme", identifier)
        body = error_report(emulator, identifier)
        answer = client.post(
            "/stripe/meter-errors",
            data=body,
            headers={"Stripe-Signature": signature(body, secret="whsec_someone_else")},
        )
        assert answer.status_code == 400
        assert "signature" in answer.get_json()["error"]
        assert MeterReport.get(MeterReport.identifier == identifier).status == "sent"

"""Stripe's asynchronous meter error reports, delivered as a signed thin-event webhook.

Deliveries are built the way Stripe sends them: a thin event (``object: v2.core.event``, no
data) signed with ``Stripe-Signature: t=<ts>,v1=<HMAC-SHA256 of "<ts>.<body>">``; the report
itself is served by the emulator at ``GET /v2/core/events/{id}``, as Stripe does.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from dataclasses import replace
from datetime import datetime
from typing import Any

import peewee
import pytest

from sensormeter import SensormeterError, WebhookError, WebhookResult, handle_stripe_webhook
from sensormeter.emulator import StripeEmulator
from sensormeter.ledger import hourly_identifier
from sensormeter.logs import capture_logs
from sensormeter.models import MODELS, MeterReport, utcnow
from sensormeter.settings import Settings

SECRET = "whsec_sensormeter_webhook_tests"
ERROR_REPORT = "v1.billing.meter.error_report_triggered"
METER = "mtr_test_61R9IeFgJxFjRqnMv41IeFgJxFjRqsKi"
HOUR = datetime(2026, 11, 29, 4)
ACME = hourly_identifier("acme", "active_sensors", HOUR)
GLOBEX = hourly_identifier("globex", "active_sensors", HOUR)
INITECH = hourly_identifier("initech", "active_sensors", HOUR)
CUSTOMER_NOT_FOUND = "No customer found for the given stripe_customer_id: cus_acme."
TOO_OLD = "Timestamp must be within the past 35 calendar days."


def sign(body: str, secret: str = SECRET, timestamp: int | None = None) -> str:
    """A Stripe-Signature header computed as Stripe documents it (not with stripe-python)."""
    ts = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{ts}.{body}".encode(), hashlib.sha256).hexdigest()
    return f"t={ts},v1={digest}"


def thin_event(event_id: str, event_type: str = ERROR_REPORT) -> dict[str, Any]:
    """The body Stripe delivers to an event destination with the thin payload style."""
    return {
        "id": event_id,
        "object": "v2.core.event",
        "type": event_type,
        "livemode": False,
        "created": "2026-11-29T05:20:52.246Z",
        "context": None,
        "reason": None,
        "related_object": {
            "id": METER,
            "type": "billing.meter",
            "url": f"/v1/billing/meters/{METER}",
        },
    }


def sample(identifier: str, message: str) -> dict[str, Any]:
    """One sample error: Stripe's message and the identifier of the refused meter event."""
    return {"error_message": message, "request": {"identifier": identifier}}


def full_event(
    event_id: str, error_types: list[dict[str, Any]], event_type: str = ERROR_REPORT
) -> dict[str, Any]:
    """The event as ``GET /v2/core/events/{id}`` returns it: the thin event plus its data."""
    return {
        **thin_event(event_id, event_type),
        "data": {
            "developer_message_summary": "There are invalid meter events for meter active_sensors",
            "reason": {
                "error_count": sum(t["error_count"] for t in error_types),
                "error_types": error_types,
            },
            "validation_start": "2026-11-29T04:00:00.000Z",
            "validation_end": "2026-11-29T05:00:00.000Z",
        },
    }


def error_type(code: str, *samples: dict[str, Any], count: int | None = None) -> dict[str, Any]:
    """One entry of ``reason.error_types``."""
    return {
        "code": code,
        "error_count": len(samples) if count is None else count,
        "sample_errors": list(samples),
    }


def deliver(
    body: str, settings: Settings, database: peewee.Database, header: str | None = None
) -> WebhookResult:
    """Call the handler the way a host view does: raw bytes and the signature header."""
    return handle_stripe_webhook(
        body.encode(),
        sign(body) if header is None else header,
        settings=settings,
        database=database,
    )


def ledger_row(organization_id: str, identifier: str) -> None:
    """A ledger row Stripe accepted synchronously (status sent)."""
    now = utcnow()
    MeterReport.create(
        organization_id=organization_id,
        event_name="active_sensors",
        value=17,
        identifier=identifier,
        period_hour=HOUR,
        stripe_customer_id=f"cus_{organization_id}",
        measured_at=HOUR.replace(minute=59, second=59),
        status=MeterReport.SENT,
        attempts=1,
        sent_at=now,
    )


def rows() -> dict[str, tuple[str, str | None, datetime]]:
    """Every ledger row's (status, last_error, updated_at), by identifier."""
    return {
        r.identifier: (r.status, r.last_error, r.updated_at)
        for r in MeterReport.select().order_by(MeterReport.id)
    }


@pytest.fixture
def webhook_settings(settings: Settings) -> Settings:
    """The test settings (Stripe key aimed at the emulator) with a webhook signing secret."""
    return replace(settings, stripe_webhook_secret=SECRET)


@pytest.fixture
def ledger(database: peewee.Database) -> peewee.Database:
    """Three delivered hourly reports: acme, globex and initech."""
    ledger_row("acme", ACME)
    ledger_row("globex", GLOBEX)
    ledger_row("initech", INITECH)
    return database


@pytest.fixture
def report(emulator: StripeEmulator) -> str:
    """An error report naming acme (unknown customer) and globex (too old); its thin body."""
    emulator.add_v2_event(
        full_event(
            "evt_test_report",
            [
                error_type("meter_event_customer_not_found", sample(ACME, CUSTOMER_NOT_FOUND)),
                error_type("timestamp_too_far_in_past", sample(GLOBEX, TOO_OLD), count=3),
            ],
        )
    )
    return json.dumps(thin_event("evt_test_report"))


class TestErrorReport:
    def test_named_rows_are_marked_rejected_with_code_and_message(
        self, ledger: peewee.Database, webhook_settings: Settings, report: str
    ) -> None:
        """Each sample's row becomes rejected; last_error names the report, code and message."""
        result = deliver(report, webhook_settings, ledger)

        assert result == WebhookResult(
            event_id="evt_test_report",
            event_type=ERROR_REPORT,
            handled=True,
            rows_marked=2,
            unmatched_samples=0,
            error_count=4,
        )
        after = rows()
        assert after[ACME][:2] == (
            "rejected",
            "Stripe async error report evt_test_report: meter_event_customer_not_found: "
            + CUSTOMER_NOT_FOUND,
        )
        assert after[GLOBEX][:2] == (
            "rejected",
            f"Stripe async error report evt_test_report: timestamp_too_far_in_past: {TOO_OLD}",
        )
        assert after[INITECH][:2] == ("sent", None)

    def test_without_a_database_the_ledger_of_database_url_is_used(
        self, ledger: peewee.Database, webhook_settings: Settings, report: str
    ) -> None:
        """No ``database`` (a host with its own ORM): DATABASE_URL's ledger is opened for it."""
        result = handle_stripe_webhook(report.encode(), sign(report), settings=webhook_settings)
        ledger.bind(MODELS)  # the handler bound the models to the database it opened

        assert result.rows_marked == 2
        assert [status for status, _, _ in rows().values()] == ["rejected", "rejected", "sent"]

    def test_each_marked_row_is_logged_as_a_warning(
        self, ledger: peewee.Database, webhook_settings: Settings, report: str
    ) -> None:
        """One webhook.meter_error warning per sample: identifier, organization, code, message."""
        with capture_logs() as logs:
            deliver(report, webhook_settings, ledger)

        errors = [e for e in logs if e["event"] == "webhook.meter_error"]
        assert [
            (e["log_level"], e["identifier"], e["organization_id"], e["code"], e["message"])
            for e in errors
        ] == [
            ("warning", ACME, "acme", "meter_event_customer_not_found", CUSTOMER_NOT_FOUND),
            ("warning", GLOBEX, "globex", "timestamp_too_far_in_past", TOO_OLD),
        ]

    def test_unmatched_identifier_is_logged_and_counted(
        self, ledger: peewee.Database, webhook_settings: Settings, emulator: StripeEmulator
    ) -> None:
        """A sample naming no ledger row is counted and logged; the matched one is still marked."""
        ghost = hourly_identifier("ghost", "active_sensors", HOUR)
        emulator.add_v2_event(
            full_event(
                "evt_test_ghost",
                [
                    error_type(
                        "meter_event_customer_not_found",
                        sample(ghost, "No customer found for the given stripe_customer_id."),
                        sample(ACME, CUSTOMER_NOT_FOUND),
                    )
                ],
            )
        )
        body = json.dumps(thin_event("evt_test_ghost"))

        with capture_logs() as logs:
            result = deliver(body, webhook_settings, ledger)

        assert (result.handled, result.rows_marked, result.unmatched_samples) == (True, 1, 1)
        unmatched = [e for e in logs if e["event"] == "webhook.meter_error_unmatched"]
        assert [(e["log_level"], e["identifier"]) for e in unmatched] == [("warning", ghost)]
        assert rows()[ACME][0] == "rejected"
        assert ghost not in rows()

    def test_second_delivery_changes_nothing(
        self, ledger: peewee.Database, webhook_settings: Settings, report: str
    ) -> None:
        """Stripe may deliver an event twice: the second delivery marks no row and alters none."""
        first = deliver(report, webhook_settings, ledger)
        after_first = rows()

        second = deliver(report, webhook_settings, ledger)

        assert (first.rows_marked, second.rows_marked) == (2, 0)
        assert second.handled and second.unmatched_samples == 0
        assert rows() == after_first


class TestOtherEvents:
    def test_other_event_types_are_ignored(
        self, ledger: peewee.Database, webhook_settings: Settings, emulator: StripeEmulator
    ) -> None:
        """Another event type, even one with the same data shape, is logged and left alone."""
        other = "v1.billing.meter.no_meter_found"
        emulator.add_v2_event(
            full_event("evt_test_other", [error_type("no_meter", sample(ACME, "No meter."))], other)
        )
        before = rows()

        with capture_logs() as logs:
            result = deliver(
                json.dumps(thin_event("evt_test_other", other)), webhook_settings, ledger
            )

        assert result == WebhookResult("evt_test_other", other, handled=False)
        assert rows() == before
        assert [(e["event"], e["log_level"], e["type"]) for e in logs] == [
            ("webhook.ignored", "info", other)
        ]


class TestRefusedDeliveries:
    """Each refused delivery raises WebhookError (a SensormeterError) and changes no row."""

    @pytest.mark.parametrize(
        "header",
        [
            pytest.param(lambda body: sign(body, secret="whsec_someone_else"), id="other-secret"),
            pytest.param(lambda body: sign(body + " "), id="body-altered"),
            pytest.param(lambda body: "t=1,v0=abc", id="no-v1-signature"),
            pytest.param(lambda body: "", id="empty-header"),
        ],
    )
    def test_bad_signature(
        self, ledger: peewee.Database, webhook_settings: Settings, report: str, header: Any
    ) -> None:
        """A signature that does not match the body and secret is refused."""
        before = rows()
        with pytest.raises(WebhookError, match="signature verification failed") as caught:
            deliver(report, webhook_settings, ledger, header=header(report))
        assert isinstance(caught.value, SensormeterError)
        assert not caught.value.retryable
        assert rows() == before

    def test_stale_timestamp(
        self, ledger: peewee.Database, webhook_settings: Settings, report: str
    ) -> None:
        """A correct signature made more than 5 minutes ago is refused as a possible replay."""
        before = rows()
        stale = sign(report, timestamp=int(time.time()) - 301)
        with pytest.raises(WebhookError, match="tolerance") as caught:
            deliver(report, webhook_settings, ledger, header=stale)
        assert not caught.value.retryable
        assert rows() == before

    def test_missing_secret(self, ledger: peewee.Database, settings: Settings, report: str) -> None:
        """Without STRIPE_WEBHOOK_SECRET nothing can be verified, so nothing is accepted."""
        assert settings.stripe_webhook_secret is None
        before = rows()
        with pytest.raises(WebhookError, match="STRIPE_WEBHOOK_SECRET is not set"):
            deliver(report, settings, ledger)
        assert rows() == before

    @pytest.mark.parametrize(
        ("body", "problem"),
        [
            ("this is not json", "not JSON"),
            ('{"id": "evt_test_report", "type": ', "not JSON"),
            ('["evt_test_report"]', "not a Stripe event"),
            ('{"type": "v1.billing.meter.error_report_triggered"}', "not a Stripe event"),
        ],
    )
    def test_malformed_body(
        self,
        ledger: peewee.Database,
        webhook_settings: Settings,
        report: str,
        body: str,
        problem: str,
    ) -> None:
        """A correctly signed body that is not a JSON Stripe event is refused, not crashed on."""
        before = rows()
        with pytest.raises(WebhookError, match=problem) as caught:
            deliver(body, webhook_settings, ledger)
        assert not caught.value.retryable
        assert rows() == before

    def test_event_stripe_cannot_return_is_retryable(
        self, ledger: peewee.Database, webhook_settings: Settings
    ) -> None:
        """If the report cannot be fetched, the error asks for a redelivery and changes nothing."""
        before = rows()
        body = json.dumps(thin_event("evt_test_unknown"))
        with pytest.raises(WebhookError, match="could not fetch the event") as caught:
            deliver(body, webhook_settings, ledger)
        assert caught.value.retryable
        assert caught.value.event_id == "evt_test_unknown"
        assert rows() == before


class TestSharedCustomerEvent:
    def test_a_sample_naming_a_shared_event_rejects_every_part(
        self, database: peewee.Database, webhook_settings: Settings, emulator: StripeEmulator
    ) -> None:
        """A customer's event carries several organizations' rows: each becomes rejected."""
        shared = "active_sensors+cus_x-2026-11-29T04"
        for org in ("a", "b"):
            ledger_row(org, f"active_sensors-{org}-2026-11-29T04")
        ledger_row("c", "active_sensors-c-2026-11-29T04")
        MeterReport.update(event_identifier=shared, event_value=34).where(
            MeterReport.organization_id.in_(["a", "b"])
        ).execute()
        emulator.add_v2_event(
            full_event(
                "evt_shared",
                [error_type("meter_event_customer_not_found", sample(shared, CUSTOMER_NOT_FOUND))],
            )
        )
        result = deliver(json.dumps(thin_event("evt_shared")), webhook_settings, database)
        assert (result.rows_marked, result.unmatched_samples) == (2, 0)
        statuses = {r.organization_id: r.status for r in MeterReport.select()}
        assert statuses == {"a": "rejected", "b": "rejected", "c": "sent"}

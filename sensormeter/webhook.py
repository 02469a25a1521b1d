"""Stripe's asynchronous meter error reports: verify the webhook, mark the named ledger rows.

Stripe accepts a meter event first and validates it later; what fails then (an unknown
customer, a timestamp out of range, ...) is reported in the event
``v1.billing.meter.error_report_triggered``. That is a *thin* event, sent to an event
destination: the delivery carries only the event id, its type and the meter it concerns.
The report itself (error codes, counts and sample errors, each with the identifier of the
meter event it refused) is fetched from Stripe with ``GET /v2/core/events/{id}``.

A code that blames the customer itself (``meter_event_customer_not_found``, ...) quarantines
the customers of the refused events; one that blames the meter (``archived_meter``,
``no_meter``) pauses the meter: their later reports are kept back instead of refused every
hour (sensormeter/quarantine/).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import peewee
import stripe

from . import ledger
from .defaults import ERROR_LIMIT
from .errors import WebhookError
from .logs import get_logger
from .meters.base import make_stripe_client
from .models import MeterReport, open_database, utcnow
from .quarantine import CUSTOMER, blame, start
from .settings import Settings

log = get_logger(__name__)

ERROR_REPORT_EVENT = "v1.billing.meter.error_report_triggered"
THIN_EVENT_OBJECT = "v2.core.event"
# Stripe's own default: a delivery signed more than 5 minutes ago is refused as a replay.
DEFAULT_TOLERANCE_SECONDS = 300
ERROR_PREFIX = "Stripe async error report"


@dataclass(frozen=True)
class WebhookResult:
    """What one webhook delivery came to.

    ``rows_marked`` counts the ledger rows this delivery changed to ``rejected`` (0 when the
    same event is delivered again); ``unmatched_samples`` the sample errors whose identifier
    is not in the ledger; ``error_count`` is Stripe's total for the report's window, of which
    the samples are only a part.
    """

    event_id: str
    event_type: str
    handled: bool
    rows_marked: int = 0
    unmatched_samples: int = 0
    error_count: int = 0


@dataclass(frozen=True)
class SampleError:
    """One sample error of a report: the meter event's identifier, Stripe's code and message."""

    identifier: str | None
    code: str
    message: str


@dataclass(frozen=True)
class ErrorReport:
    """The data of a ``v1.billing.meter.error_report_triggered`` event, as fetched from Stripe."""

    meter_id: str | None
    error_count: int
    validation_start: str | None
    validation_end: str | None
    summary: str | None
    samples: tuple[SampleError, ...]


def handle_stripe_webhook(
    payload: bytes | str,
    signature_header: str | None,
    *,
    settings: Settings,
    database: peewee.Database | None = None,
    client: stripe.StripeClient | None = None,
    tolerance: int = DEFAULT_TOLERANCE_SECONDS,
) -> WebhookResult:
    """Verify a Stripe webhook delivery and mark the ledger rows its meter error report names.

    Args:
        payload: the raw request body, exactly as received (not re-serialized JSON).
        signature_header: the ``Stripe-Signature`` request header.
        settings: sensormeter's settings; ``stripe_webhook_secret`` verifies the signature
            and the Stripe key fetches the event's data.
        database: the ledger database, from :func:`sensormeter.models.open_database`; by
            default ``settings.database_url`` is opened for this delivery and closed after.
        client: a StripeClient to fetch the event with; by default one is made from settings.
        tolerance: how old (in seconds) a signature may be.

    Returns:
        A :class:`WebhookResult`; ``handled`` is False for any other event type.

    Raises:
        WebhookError: no secret configured, a bad or stale signature or a malformed body
            (``retryable`` False), or the event could not be fetched (``retryable`` True).
            Nothing is changed in the ledger when it is raised.
    """
    notification = verify_notification(
        payload, signature_header, settings.stripe_webhook_secret, tolerance
    )
    event_id, event_type = notification["id"], notification["type"]
    if event_type != ERROR_REPORT_EVENT:
        log.info("webhook.ignored", event_id=event_id, type=event_type)
        return WebhookResult(event_id, event_type, handled=False)
    if notification.get("object") != THIN_EVENT_OBJECT:
        raise WebhookError(
            f"expected a thin event (object {THIN_EVENT_OBJECT!r}), "
            f"got object {notification.get('object')!r}",
            event_id=event_id,
        )
    context = notification.get("context")
    event = fetch_event(
        client or make_stripe_client(settings),
        event_id,
        context if isinstance(context, str) else None,
    )
    report = parse_error_report(event, event_id)
    own = None
    if database is None:
        # A host with its own ORM holds no peewee database; deliveries are rare, so one
        # connection per delivery costs nothing worth keeping a pool for.
        database = own = open_database(settings.database_url, create=False)
    try:
        marked, unmatched = mark_rejected(database, report, event_id)
        quarantined = quarantine_refused(database, report, settings.meter_event_name)
    finally:
        if own is not None:
            own.close()
    log.info(
        "webhook.meter_error_report",
        event_id=event_id,
        meter_id=report.meter_id,
        error_count=report.error_count,
        samples=len(report.samples),
        rows_marked=marked,
        unmatched_samples=unmatched,
        quarantines_opened=quarantined,
        validation_start=report.validation_start,
        validation_end=report.validation_end,
        summary=report.summary,
    )
    return WebhookResult(
        event_id,
        event_type,
        handled=True,
        rows_marked=marked,
        unmatched_samples=unmatched,
        error_count=report.error_count,
    )


def verify_notification(
    payload: bytes | str, signature_header: str | None, secret: str | None, tolerance: int
) -> dict[str, Any]:
    """Check the signature (stripe-python's verification) and return the delivered JSON object."""
    if not secret:
        raise WebhookError(
            "STRIPE_WEBHOOK_SECRET is not set; set it to the event destination's signing "
            "secret (whsec_...)"
        )
    try:
        text = payload.decode("utf-8") if isinstance(payload, bytes | bytearray) else payload
    except UnicodeDecodeError:
        raise WebhookError("the body is not UTF-8 text") from None
    try:
        stripe.WebhookSignature.verify_header(text, signature_header, secret, tolerance)
    except stripe.SignatureVerificationError as exc:
        # The message says which check failed (no header, no match, too old), never the secret.
        raise WebhookError(f"signature verification failed: {exc.user_message}") from None
    try:
        body = json.loads(text)
    except ValueError:
        raise WebhookError("the body is not JSON") from None
    if not (
        isinstance(body, dict)
        and isinstance(body.get("id"), str)
        and isinstance(body.get("type"), str)
    ):
        raise WebhookError("the body is not a Stripe event (a JSON object with an id and a type)")
    return body


def fetch_event(client: stripe.StripeClient, event_id: str, context: str | None) -> dict[str, Any]:
    """Fetch a thin event's full data from Stripe (``GET /v2/core/events/{id}``)."""
    try:
        if context:
            event = client.v2.core.events.retrieve(event_id, options={"stripe_context": context})
        else:
            event = client.v2.core.events.retrieve(event_id)
    except stripe.StripeError as exc:
        raise WebhookError(
            f"could not fetch the event from Stripe: {type(exc).__name__}: {exc.user_message}",
            event_id=event_id,
            retryable=True,
            request_id=exc.request_id,
        ) from exc
    return event.to_dict()


def parse_error_report(event: dict[str, Any], event_id: str) -> ErrorReport:
    """Read the error report out of a fetched event; raise WebhookError if it has none."""
    data = event.get("data")
    reason = data.get("reason") if isinstance(data, dict) else None
    if not isinstance(data, dict) or not isinstance(reason, dict):
        raise WebhookError("the fetched event has no data.reason", event_id=event_id)
    samples: list[SampleError] = []
    counted = 0
    for error_type in _objects(reason.get("error_types")):
        code = str(error_type.get("code") or "unknown")
        counted += _count(error_type.get("error_count"))
        for sample in _objects(error_type.get("sample_errors")):
            request = sample.get("request")
            identifier = request.get("identifier") if isinstance(request, dict) else None
            samples.append(
                SampleError(
                    identifier if isinstance(identifier, str) and identifier else None,
                    code,
                    str(sample.get("error_message") or ""),
                )
            )
    related = event.get("related_object")
    meter_id = related.get("id") if isinstance(related, dict) else None
    return ErrorReport(
        meter_id=meter_id if isinstance(meter_id, str) else None,
        error_count=_count(reason.get("error_count")) or counted,
        validation_start=_text(data.get("validation_start")),
        validation_end=_text(data.get("validation_end")),
        summary=_text(data.get("developer_message_summary")),
        samples=tuple(samples),
    )


def rejection_message(event_id: str, sample: SampleError) -> str:
    """The ``last_error`` of a row refused in an error report: says where it came from."""
    text = f"{ERROR_PREFIX} {event_id}: {sample.code}: {sample.message}"
    return text[:ERROR_LIMIT]


def mark_rejected(database: peewee.Database, report: ErrorReport, event_id: str) -> tuple[int, int]:
    """Mark the rows the samples name as rejected; return (rows changed, samples unmatched).

    A row already rejected with the same message is left alone, so a second delivery of the
    same event changes nothing. Stripe refused these events for good: a rejected row is never
    sent again by a retry or a rerun of its hour.
    """
    identifiers = sorted({s.identifier for s in report.samples if s.identifier})
    marked = unmatched = 0
    seen: set[str] = set()
    # Bound here, not only by open_database: the ledger queries below go to this database
    # even in a host process whose models were bound to another one.
    with database.bind_ctx([MeterReport]), database.atomic():
        # A sample names an event: one row's own, or a shared customer's, with a row per part.
        by_event: dict[str, list[ledger.LedgerRow]] = {}
        for found in ledger.find_by_event(identifiers):
            by_event.setdefault(ledger.event_key(found), []).append(found)
        now = utcnow()
        for sample in report.samples:
            rows = by_event.get(sample.identifier, []) if sample.identifier else []
            if not rows:
                unmatched += 1
                log.warning(
                    "webhook.meter_error_unmatched",
                    event_id=event_id,
                    identifier=sample.identifier,
                    code=sample.code,
                    message=sample.message,
                )
                continue
            for row in rows:
                marked += _mark_row(row, sample, event_id, now, seen)
    return marked, unmatched


def quarantine_refused(
    database: peewee.Database, report: ErrorReport, event_name: str
) -> list[str]:
    """Quarantine the customers, or pause the meter, that the report's codes blame.

    The customer of a refused event is the one its ledger rows were sent for; a meter-level
    code pauses the meter of those rows (``event_name`` when no sample names a known row).
    Returns the customers and meters newly quarantined (one already open is left as it is).
    """
    blamed = [s for s in report.samples if blame(s.code)]
    if not blamed:
        return []
    identifiers = sorted({s.identifier for s in blamed if s.identifier})
    with database.bind_ctx([MeterReport]):
        found = ledger.find_by_event(identifiers)
    by_event: dict[str, list[ledger.LedgerRow]] = {}
    for row in found:
        by_event.setdefault(ledger.event_key(row), []).append(row)
    opened: list[str] = []
    for sample in blamed:
        scope = str(blame(sample.code))
        rows = by_event.get(sample.identifier or "", [])
        if scope == CUSTOMER:
            subjects = {row.customer for row in rows}
        else:
            subjects = {row.event_name for row in rows} or {event_name}
        for subject in sorted(subjects):
            if start(database, scope, subject, sample.code, sample.message):
                opened.append(subject)
    return opened


def _mark_row(
    row: ledger.LedgerRow, sample: SampleError, event_id: str, now: Any, seen: set[str]
) -> int:
    """Mark one row rejected with the sample's message (once per row); return rows changed."""
    changed = 0
    if row.identifier not in seen:  # one message per row, the first sample's
        seen.add(row.identifier)
        message = rejection_message(event_id, sample)
        changed = (
            MeterReport.update(
                {
                    MeterReport.status: MeterReport.REJECTED,
                    MeterReport.last_error: message,
                    MeterReport.updated_at: now,
                }
            )
            .where(
                (MeterReport.id == row.id)
                & (
                    (MeterReport.status != MeterReport.REJECTED)
                    | MeterReport.last_error.is_null()
                    | (MeterReport.last_error != message)
                )
            )
            .execute()
        )
    log.warning(
        "webhook.meter_error",
        event_id=event_id,
        identifier=row.identifier,
        event_identifier=row.event_identifier,
        organization_id=row.organization_id,
        code=sample.code,
        message=sample.message,
        previous_status=row.status,
        marked=bool(changed),
    )
    return int(changed)


def _objects(value: object) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None

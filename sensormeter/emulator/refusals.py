"""What the emulated account refuses: deleted customers, archived meters, and their error reports.

Stripe accepts a meter event for a customer it does not have (or for an archived meter) with
a 200 and refuses it later, in the asynchronous error report of the thin event
``v1.billing.meter.error_report_triggered``. The emulator does the same: such an event is
answered as accepted, is not aggregated, and waits here until a test asks for the report.
Customers exist by default (any id is a customer); a test deletes and restores them.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .reads import stable_id
from .replies import Reply, Response

ERROR_REPORT_EVENT = "v1.billing.meter.error_report_triggered"
CUSTOMER_NOT_FOUND = "meter_event_customer_not_found"
ARCHIVED_METER = "archived_meter"


@dataclass(frozen=True)
class RefusedEvent:
    """A meter event accepted on the request and refused afterwards, with Stripe's code."""

    identifier: str | None
    event_name: str
    customer: str
    code: str
    message: str
    received_at: float


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


class Refusals:
    """Deleted customers, archived meters and the refused events not yet reported."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._deleted: dict[str, bool] = {}  # customer id -> purged (404) or deleted (200)
        self._archived: set[str] = set()
        self._refused: list[RefusedEvent] = []
        self._reported = 0  # refused events already put in an error report

    def delete_customer(self, customer: str, *, purge: bool = False) -> None:
        """Delete a customer: Stripe then answers ``deleted: true`` (or 404 when purged)."""
        with self._lock:
            self._deleted[customer] = purge

    def restore_customer(self, customer: str) -> None:
        """Make a deleted customer exist again (a support engineer recreated or undid it)."""
        with self._lock:
            self._deleted.pop(customer, None)

    def archive_meter(self, event_name: str) -> None:
        """Archive (deactivate) the meter of this event name: its events are refused."""
        with self._lock:
            self._archived.add(event_name)

    def reactivate_meter(self, event_name: str) -> None:
        """Reactivate an archived meter."""
        with self._lock:
            self._archived.discard(event_name)

    def is_archived(self, event_name: str) -> bool:
        """True while the meter of this event name is archived."""
        with self._lock:
            return event_name in self._archived

    def clear(self) -> None:
        """Forget deleted customers, archived meters and refused events."""
        with self._lock:
            self._deleted.clear()
            self._archived.clear()
            self._refused.clear()
            self._reported = 0

    def customer(self, customer: str, now: float) -> Response:
        """Answer ``GET /v1/customers/{id}`` as Stripe does, deleted customers included."""
        with self._lock:
            purged = self._deleted.get(customer)
        if purged:
            raise Reply(404, f"No such customer: '{customer}'", "id", code="resource_missing")
        if purged is not None:
            return 200, {"id": customer, "object": "customer", "deleted": True}, {}
        body = {"id": customer, "object": "customer", "created": int(now), "livemode": False}
        return 200, body, {}

    def refuse_if_needed(
        self, identifier: str | None, event_name: str, customer: str, now: float
    ) -> bool:
        """Keep the event for the next error report if the account refuses it; True if so."""
        with self._lock:
            if event_name in self._archived:
                code = ARCHIVED_METER
                message = f"The meter for event_name {event_name} is archived (inactive)."
            elif customer in self._deleted:
                code = CUSTOMER_NOT_FOUND
                message = f"No customer found for the given stripe_customer_id: {customer}."
            else:
                return False
            self._refused.append(RefusedEvent(identifier, event_name, customer, code, message, now))
        return True

    def refused(self) -> list[RefusedEvent]:
        """Every event refused after acceptance, in arrival order."""
        with self._lock:
            return list(self._refused)

    def next_report(self, now: float, event_id: str | None = None) -> dict[str, Any] | None:
        """The full v2 event of an error report of the refused events not yet reported.

        None when nothing new was refused. Its shape is what ``GET /v2/core/events/{id}``
        returns; the thin notification Stripe delivers is the same without ``data``.
        """
        with self._lock:
            fresh = self._refused[self._reported :]
            self._reported = len(self._refused)
        if not fresh:
            return None
        by_code: dict[str, list[RefusedEvent]] = {}
        for refused in fresh:
            by_code.setdefault(refused.code, []).append(refused)
        meter = stable_id("mtr", fresh[0].event_name)
        error_types = [
            {
                "code": code,
                "error_count": len(events),
                # Stripe sends a few samples per code; the emulator sends them all.
                "sample_errors": [
                    {"error_message": e.message, "request": {"identifier": e.identifier}}
                    for e in events
                ],
            }
            for code, events in by_code.items()
        ]
        return {
            "id": event_id or "evt_test_" + secrets.token_hex(12),
            "object": "v2.core.event",
            "type": ERROR_REPORT_EVENT,
            "livemode": False,
            "created": _iso(now),
            "context": None,
            "reason": None,
            "related_object": {
                "id": meter,
                "type": "billing.meter",
                "url": f"/v1/billing/meters/{meter}",
            },
            "data": {
                "developer_message_summary": (
                    f"There are invalid meter events for meter {fresh[0].event_name}"
                ),
                "reason": {"error_count": len(fresh), "error_types": error_types},
                "validation_start": _iso(min(e.received_at for e in fresh)),
                "validation_end": _iso(now),
            },
        }

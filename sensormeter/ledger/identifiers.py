"""Organization ids and meter event identifiers: fixed before the first attempt, never changed.

Identifiers already in ledgers and at Stripe must keep matching: every form is pinned by
tests/test_shared_customers.py (TestIdentifiers).
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime

from ..defaults import MAX_IDENTIFIER
from ..errors import InvalidOrganizationId
from ..hours import format_hour

# Matched with fullmatch: "$" alone would also match before a trailing newline ("acme\n").
_ORG_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@\-]{0,63}", re.ASCII)


def organization_id_problem(organization_id: object) -> str | None:
    """Say what is wrong with an organization id, or None when it is well-formed."""
    if not isinstance(organization_id, str):
        return f"must be a string, got {type(organization_id).__name__}"
    if organization_id.strip() == "":
        return "must not be empty"
    if organization_id != organization_id.strip():
        return "has leading or trailing whitespace"
    if not _ORG_ID.fullmatch(organization_id):
        return (
            "use 1-64 letters, digits, '.', '_', ':', '@' or '-' (ASCII), "
            "starting with a letter or digit"
        )
    return None


def validate_organization_id(organization_id: object) -> str:
    """Return the id if it is a non-empty string of 1-64 safe ASCII characters, else raise."""
    problem = organization_id_problem(organization_id)
    if problem is not None or not isinstance(organization_id, str):
        raise InvalidOrganizationId(organization_id, problem or "must be a string")
    return organization_id


def _bounded(readable: str, *parts: str) -> str:
    if len(readable) <= MAX_IDENTIFIER:
        return readable
    digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:40]
    return f"sm-{digest}"


def hourly_identifier(organization_id: str, event_name: str, hour: datetime) -> str:
    """The identifier of an hourly report: fixed by (organization, event name, UTC hour)."""
    label = format_hour(hour)
    return _bounded(
        f"{event_name}-{organization_id}-{label}", "hourly", event_name, organization_id, label
    )


def on_demand_identifier(organization_id: str, event_name: str, request_id: str) -> str:
    """The identifier of a report asked for by ``enqueue_sensor_report``: one per request."""
    return _bounded(
        f"{event_name}-{organization_id}-r{request_id}",
        "request",
        event_name,
        organization_id,
        request_id,
    )


def customer_hourly_identifier(customer: str, event_name: str, hour: datetime) -> str:
    """The identifier of a shared customer's hourly event: fixed by (customer, event, hour).

    ``+`` is in neither an organization id nor an event name, so it can never equal an
    organization's identifier.
    """
    label = format_hour(hour)
    return _bounded(
        f"{event_name}+{customer}-{label}", "customer-hourly", event_name, customer, label
    )


def customer_request_identifier(customer: str, event_name: str, request_id: str) -> str:
    """The identifier of a shared customer's on-demand or period-close event."""
    return _bounded(
        f"{event_name}+{customer}-r{request_id}",
        "customer-request",
        event_name,
        customer,
        request_id,
    )

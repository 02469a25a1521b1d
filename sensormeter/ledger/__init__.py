"""The ledger: one ``meter_reports`` row per report, the billing audit trail.

Identifiers (``identifiers.py``) are fixed before the first attempt; rows (``rows.py``) are
created pending and record every attempt's outcome. Beside it, the billable history
(``history.py``): when each organization was billable, and under which customer; and
what it says of a past hour (``past.py``).
"""

from __future__ import annotations

from . import history, past
from .identifiers import (
    customer_hourly_identifier,
    customer_request_identifier,
    hourly_identifier,
    on_demand_identifier,
    organization_id_problem,
    validate_organization_id,
)
from .rows import (
    LedgerRow,
    NewReport,
    apply_attempt,
    create_pending,
    event_for,
    event_key,
    find,
    find_by_event,
    find_by_ids,
    ids_to_resend,
    keep_back,
    record_attempts,
    summary,
)

__all__ = [
    "LedgerRow",
    "NewReport",
    "apply_attempt",
    "create_pending",
    "customer_hourly_identifier",
    "customer_request_identifier",
    "event_for",
    "event_key",
    "find",
    "find_by_event",
    "find_by_ids",
    "history",
    "hourly_identifier",
    "ids_to_resend",
    "keep_back",
    "on_demand_identifier",
    "organization_id_problem",
    "past",
    "record_attempts",
    "summary",
    "validate_organization_id",
]

"""What sensormeter asks of the host's data: the :class:`UsageSource` protocol, and chunking."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

# What "blank" means for a customer id: ASCII whitespace, trimmed alike in SQL and in Python.
BLANKS = " \t\n\r\f\v"

# Why an organization with active sensors is not billed, besides its subscription's status
# (a Stripe status such as ``past_due`` or ``canceled`` is its own reason).
NO_CUSTOMER = "no_customer"  # a subscription in a billable status, but no Stripe customer id
NO_SUBSCRIPTION = "no_subscription"  # no subscription at all


@dataclass(frozen=True)
class UnbilledUsage:
    """An organization with active sensors that is not billable, and why.

    ``reason`` is the status of its newest subscription (``past_due``, ``canceled``, ...),
    :data:`NO_CUSTOMER` or :data:`NO_SUBSCRIPTION`.
    """

    organization_id: str
    reason: str
    sensors: int


@runtime_checkable
class UsageSource(Protocol):
    """Bulk reads sensormeter needs; every method is one query for a whole chunk."""

    def billable_organization_ids(self, after: str | None, limit: int) -> list[str]:
        """Billable organization ids greater than ``after``, ascending, at most ``limit``."""
        ...

    def billable_customers(self, organization_ids: Sequence[str]) -> dict[str, str]:
        """Map each billable organization among ``organization_ids`` to its Stripe customer."""
        ...

    def count_active_sensors(self, organization_ids: Sequence[str]) -> dict[str, int]:
        """Map each organization among ``organization_ids`` to its active-sensor count."""
        ...

    def explain_not_billable(self, organization_id: str) -> str:
        """Say in a few words why an organization is not billable (for the log)."""
        ...


# Optional methods, looked up with getattr where they are used (docs/integrating.md):
#   count_active_sensors_at(organization_ids, at) -> dict[str, int]   the counts as of ``at``
#   periods_ending(after, until) -> dict[str, list[datetime]]           period-close reports
#   organizations_of_customers(customers) -> dict[str, list[str]]       shared customers
#   unbilled_usage() -> list[UnbilledUsage]                              ``sensormeter unbilled``
UNBILLED_METHOD = "unbilled_usage"


def supports_unbilled(source: object) -> bool:
    """Whether a usage source answers ``unbilled_usage()`` (an optional method)."""
    return callable(getattr(source, UNBILLED_METHOD, None))


def _naive(value: Any) -> datetime:
    # SQLite hands datetimes back as text when peewee cannot coerce them.
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment.replace(tzinfo=None)


def ends_in_window(
    rows: Iterable[Sequence[Any]], after: datetime, until: datetime
) -> dict[str, list[datetime]]:
    """Each organization's moments (from rows of organization, moment, ...) in the window."""
    found: dict[str, set[datetime]] = {}
    for org_id, *moments in rows:
        for moment in moments:
            if moment is not None and after < _naive(moment) <= until:
                found.setdefault(org_id, set()).add(_naive(moment))
    return {org_id: sorted(ends) for org_id, ends in found.items()}


def iter_billable_chunks(source: UsageSource, chunk_size: int) -> Iterator[list[str]]:
    """Stream billable organization ids in chunks; memory stays bounded by ``chunk_size``."""
    after: str | None = None
    while True:
        chunk = source.billable_organization_ids(after, chunk_size)
        if not chunk:
            return
        yield chunk
        if len(chunk) < chunk_size:
            return
        after = chunk[-1]

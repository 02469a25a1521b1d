"""Unbilled usage: organizations with active sensors that are not billed, and since when.

The usage source says who (its optional ``unbilled_usage()``); the billable history says
since when (the end of each one's last billable interval). ``sensormeter unbilled`` prints
the list; an hourly job keeps the totals by reason in Redis, where a metrics scrape reads
them with one GET instead of counting the fleet's sensors.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

import peewee
import redis

from ..errors import SensormeterError
from ..keys import unbilled_survey_key
from ..models import BillableInterval
from .source import NO_CUSTOMER, NO_SUBSCRIPTION, UNBILLED_METHOD, UnbilledUsage, supports_unbilled

HOUR = timedelta(hours=1)
_IN_BATCH = 500  # ids per IN (...) list: SQLite's default limit on host parameters is 999

REASON_TEXT = {
    NO_CUSTOMER: "no Stripe customer id",
    NO_SUBSCRIPTION: "no subscription",
}


def describe_reason(reason: str) -> str:
    """The reason in words: a subscription status, no customer, no subscription."""
    return REASON_TEXT.get(reason, f"subscription {reason}")


class UnbilledUnsupported(SensormeterError):
    """Raised when the usage source has no ``unbilled_usage()`` (an optional method)."""

    def __init__(self, source: object) -> None:
        self.source_name = type(source).__name__
        super().__init__(
            f"the usage source {self.source_name} does not report unbilled usage: give it an "
            f"'{UNBILLED_METHOD}()' method (docs/integrating.md)"
        )


@dataclass(frozen=True)
class UnbilledOrganization:
    """One organization not billed: its reason, active sensors, and its last billable hour."""

    organization_id: str
    reason: str
    sensors: int
    last_billable_hour: datetime | None  # None: the history never saw it billable

    @property
    def since(self) -> datetime | None:
        """The first hour it was not billed (after its last billable one); None: never billed."""
        return None if self.last_billable_hour is None else self.last_billable_hour + HOUR


def _naive(value: Any) -> datetime:
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment.replace(tzinfo=None)


def last_billable_hours(
    database: peewee.Database, organization_ids: Sequence[str]
) -> dict[str, datetime]:
    """Each organization's last billable hour in the history (one query per 500 ids)."""
    found: dict[str, datetime] = {}
    ids = list(organization_ids)
    for start in range(0, len(ids), _IN_BATCH):
        query = (
            BillableInterval.select(
                BillableInterval.organization_id, peewee.fn.MAX(BillableInterval.last_hour)
            )
            .where(BillableInterval.organization_id.in_(ids[start : start + _IN_BATCH]))
            .group_by(BillableInterval.organization_id)
        )
        for org_id, last in query.tuples().execute(database):
            found[str(org_id)] = _naive(last)
    return found


def find_unbilled(source: object, database: peewee.Database) -> list[UnbilledOrganization]:
    """Every unbilled organization, biggest first within its reason.

    Raises:
        UnbilledUnsupported: the source has no ``unbilled_usage()``.
    """
    if not supports_unbilled(source):
        raise UnbilledUnsupported(source)
    usage: list[UnbilledUsage] = getattr(source, UNBILLED_METHOD)()
    lasts = last_billable_hours(database, [u.organization_id for u in usage])
    found = [
        UnbilledOrganization(u.organization_id, u.reason, u.sensors, lasts.get(u.organization_id))
        for u in usage
    ]
    return sorted(found, key=lambda o: (o.reason, -o.sensors, o.organization_id))


@dataclass(frozen=True)
class UnbilledTotals:
    """Organizations and sensors by reason, as one survey found them."""

    organizations: dict[str, int]
    sensors: dict[str, int]
    checked_at: float  # unix time of the survey


def totals(found: Sequence[UnbilledOrganization], checked_at: float) -> UnbilledTotals:
    """Add up a survey by reason."""
    organizations: dict[str, int] = {}
    sensors: dict[str, int] = {}
    for item in found:
        organizations[item.reason] = organizations.get(item.reason, 0) + 1
        sensors[item.reason] = sensors.get(item.reason, 0) + item.sensors
    return UnbilledTotals(organizations, sensors, checked_at)


def survey(source: object) -> UnbilledTotals:
    """Add up the source's unbilled organizations by reason (raises UnbilledUnsupported).

    Only the source's one query: the totals need no "since when" from the history.
    """
    if not supports_unbilled(source):
        raise UnbilledUnsupported(source)
    usage: list[UnbilledUsage] = getattr(source, UNBILLED_METHOD)()
    found = [UnbilledOrganization(u.organization_id, u.reason, u.sensors, None) for u in usage]
    return totals(found, time.time())


def store_totals(connection: redis.Redis, queue_name: str, found: UnbilledTotals) -> None:
    """Keep the totals in Redis for the metrics (a scrape must not count the fleet itself)."""
    connection.set(unbilled_survey_key(queue_name), json.dumps(asdict(found)))


def last_totals(connection: redis.Redis, queue_name: str) -> UnbilledTotals | None:
    """The totals of the last survey, or None (none yet, or Redis lost them)."""
    raw = connection.get(unbilled_survey_key(queue_name))
    if raw is None:
        return None
    try:
        data = json.loads(raw)
        return UnbilledTotals(
            {str(k): int(v) for k, v in data["organizations"].items()},
            {str(k): int(v) for k, v in data["sensors"].items()},
            float(data["checked_at"]),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None  # written by another release: the next survey replaces it

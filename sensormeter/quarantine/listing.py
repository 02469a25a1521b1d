"""What ``sensormeter quarantine`` shows: each open quarantine with what it holds back."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import peewee

from ..models import MeterReport
from . import store


@dataclass
class QuarantineView:
    """One open quarantine, with the organizations it concerns and the reports held back."""

    scope: str
    subject: str
    code: str
    reason: str
    since: datetime
    organizations: list[str] = field(default_factory=list)
    reports_held: int = 0
    hours_held: int = 0
    first_held: datetime | None = None
    last_held: datetime | None = None

    @property
    def explanation(self) -> str:
        """Stripe's code in words."""
        return store.explain(self.code)

    def as_dict(self) -> dict[str, Any]:
        """JSON form, for ``sensormeter quarantine --json``."""
        return {
            "scope": self.scope,
            "subject": self.subject,
            "organizations": self.organizations,
            "code": self.code,
            "explanation": self.explanation,
            "reason": self.reason,
            "since": self.since.isoformat(sep=" "),
            "reports_held": self.reports_held,
            "hours_held": self.hours_held,
            "first_held": self.first_held.isoformat(sep=" ") if self.first_held else None,
            "last_held": self.last_held.isoformat(sep=" ") if self.last_held else None,
        }


def _moment(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def _hour_of_stamp(database: peewee.Database) -> Any:
    """SQL for the UTC hour a row's stamp falls in (hourly, on-demand and close reports alike)."""
    if isinstance(database, peewee.PostgresqlDatabase):
        return peewee.fn.date_trunc("hour", MeterReport.measured_at)
    return peewee.fn.strftime("%Y-%m-%dT%H", MeterReport.measured_at)


def describe(database: peewee.Database) -> list[QuarantineView]:
    """Every open quarantine, oldest first, with its held-back reports (three queries)."""
    views = [
        QuarantineView(q.scope, q.subject, q.code, q.reason, q.since)
        for q in store.open_quarantines(database)
    ]
    if not views:
        return []
    held = MeterReport.status == MeterReport.QUARANTINED
    hour = _hour_of_stamp(database)
    for column, scope in (
        (MeterReport.stripe_customer_id, store.CUSTOMER),
        (MeterReport.event_name, store.METER),
    ):
        mine = {v.subject: v for v in views if v.scope == scope}
        if not mine:
            continue
        query = (
            MeterReport.select(
                column,
                peewee.fn.COUNT(MeterReport.id),
                peewee.fn.COUNT(hour.distinct()),
                peewee.fn.MIN(MeterReport.measured_at),
                peewee.fn.MAX(MeterReport.measured_at),
            )
            .where(held & column.in_(list(mine)))
            .group_by(column)
        )
        for subject, count, hours, first, last in store.rows_of(query, database):
            view = mine[subject]
            view.reports_held, view.hours_held = int(count), int(hours)
            view.first_held, view.last_held = _moment(first), _moment(last)
    customers = [v.subject for v in views if v.scope == store.CUSTOMER]
    if customers:
        query = (
            MeterReport.select(MeterReport.stripe_customer_id, MeterReport.organization_id)
            .where(MeterReport.stripe_customer_id.in_(customers))
            .distinct()
            .order_by(MeterReport.organization_id)
        )
        by_customer = {v.subject: v for v in views if v.scope == store.CUSTOMER}
        for customer, org in store.rows_of(query, database):
            by_customer[customer].organizations.append(str(org))
    return views

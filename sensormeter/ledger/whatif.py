"""What-if pricing: what other ways of billing the delivered counts would have billed.

Per organization, over a range of UTC days: ``last`` (what a ``last`` meter bills: the value
of its latest delivered report, any kind), ``max`` (peak pricing), ``mean`` and
``device_hours`` (the sum of its hourly counts: per device-hour pricing), over its delivered
hourly reports. The database does the adding up: two aggregate queries whatever the ledger's
size, read row by row, so memory holds one line per organization, never the reports.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import peewee

from ..models import MeterReport

TOTAL = "TOTAL"
COLUMNS = ("organization_id", "last", "max", "mean", "device_hours")


@dataclass(frozen=True)
class Figures:
    """One organization's figures (or the TOTAL row); None where it has no report to use."""

    organization_id: str
    last: int | None
    max: int | None
    mean: float | None
    device_hours: int
    hours: int  # delivered hourly reports: what ``mean`` divides by

    def row(self) -> dict[str, Any]:
        """The figures by column name (``mean`` rounded to 2 places)."""
        mean = None if self.mean is None else round(self.mean, 2)
        return {
            "organization_id": self.organization_id,
            "last": self.last,
            "max": self.max,
            "mean": mean,
            "device_hours": self.device_hours,
        }


def _delivered(event_name: str, start: datetime, end: datetime, org: str | None) -> Any:
    # Every report is stamped inside the hour or period it stands for, so the stamp
    # (measured_at, indexed) places hourly and other reports alike.
    where = (
        (MeterReport.status == MeterReport.SENT)
        & (MeterReport.event_name == event_name)
        & (MeterReport.measured_at >= start)
        & (MeterReport.measured_at < end)
    )
    return where if org is None else where & (MeterReport.organization_id == org)


def _hourly_sums(database: peewee.Database, where: Any) -> Iterator[tuple[str, int, int, int]]:
    """(organization, max, sum, hours) of the delivered hourly reports, by organization."""
    org = MeterReport.organization_id
    query = (
        MeterReport.select(
            org,
            peewee.fn.MAX(MeterReport.value),
            peewee.fn.SUM(MeterReport.value),
            peewee.fn.COUNT(MeterReport.id),
        )
        .where(where & (MeterReport.kind == MeterReport.HOURLY))
        .group_by(org)
    )
    for org_id, peak, added, hours in query.tuples().iterator(database):
        yield str(org_id), int(peak), int(added), int(hours)


def _latest_values(database: peewee.Database, where: Any) -> Iterator[tuple[str, int]]:
    """(organization, value) of each one's latest delivered report (by stamp, then id)."""
    rank = peewee.fn.ROW_NUMBER().over(
        partition_by=[MeterReport.organization_id],
        order_by=[MeterReport.measured_at.desc(), MeterReport.id.desc()],
    )
    ranked = (
        MeterReport.select(MeterReport.organization_id, MeterReport.value, rank.alias("place"))
        .where(where)
        .alias("ranked")
    )
    query = peewee.Select([ranked], [ranked.c.organization_id, ranked.c.value]).where(
        ranked.c.place == 1
    )
    for org_id, value in query.tuples().iterator(database):
        yield str(org_id), int(value)


def what_if(
    database: peewee.Database,
    event_name: str,
    start: datetime,
    end: datetime,
    organization_id: str | None = None,
) -> list[Figures]:
    """Each organization's figures over [start, end), by organization id."""
    where = _delivered(event_name, start, end, organization_id)
    sums = {org: (peak, added, hours) for org, peak, added, hours in _hourly_sums(database, where)}
    lasts = dict(_latest_values(database, where))
    figures = []
    for org in sorted(set(sums) | set(lasts)):
        peak, added, hours = sums.get(org, (None, 0, 0))
        mean = added / hours if hours else None
        figures.append(Figures(org, lasts.get(org), peak, mean, added, hours))
    return figures


def total(figures: Sequence[Figures]) -> Figures:
    """The TOTAL row: the sums of ``last``, ``max`` and ``device_hours``; no ``mean``.

    Each of those is what one way of pricing bills an organization, and organizations are
    billed separately, so their sum is what the fleet would be billed. The means are over
    different numbers of hours and their sum is no mean of anything (docs/operations.md).
    """
    return Figures(
        TOTAL,
        sum(f.last or 0 for f in figures),
        sum(f.max or 0 for f in figures),
        None,
        sum(f.device_hours for f in figures),
        sum(f.hours for f in figures),
    )


def hourly_counts(
    database: peewee.Database,
    event_name: str,
    start: datetime,
    end: datetime,
    organization_id: str,
) -> list[tuple[datetime, int]]:
    """One organization's delivered hourly counts of the range, by hour (for a plot)."""
    where = _delivered(event_name, start, end, organization_id)
    query = (
        MeterReport.select(MeterReport.period_hour, MeterReport.value)
        .where(where & (MeterReport.kind == MeterReport.HOURLY))
        .order_by(MeterReport.period_hour)
    )
    return [
        (hour if isinstance(hour, datetime) else datetime.fromisoformat(str(hour)), int(value))
        for hour, value in query.tuples().iterator(database)
    ]

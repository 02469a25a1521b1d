"""What-if pricing: what other ways of billing the delivered counts would have billed.

Per organization, over a range of UTC days: ``last`` (what a ``last`` meter bills: the value
of its latest delivered report, any kind), ``max`` (peak pricing), ``mean`` and
``device_hours`` (the sum of its hourly counts: per device-hour pricing), over its delivered
hourly reports. The database does the adding up: one query whatever the ledger's size, read
row by row, so memory holds one line per organization, never the reports.
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


def _figures(database: peewee.Database, where: Any) -> Iterator[Figures]:
    """Each organization's figures, from one pass over its delivered rows (one query).

    The rows are ranked by stamp within each organization (``ROW_NUMBER()``: the latest, by
    stamp then id, is 1), then added up by organization: the value ranked 1 is ``last``, the
    hourly rows give ``max``, the sum and their number.
    """
    hourly = peewee.Case(None, [(MeterReport.kind == MeterReport.HOURLY, 1)], 0)
    place = peewee.fn.ROW_NUMBER().over(
        partition_by=[MeterReport.organization_id],
        order_by=[MeterReport.measured_at.desc(), MeterReport.id.desc()],
    )
    ranked = (
        MeterReport.select(
            MeterReport.organization_id.alias("org"),
            MeterReport.value.alias("value"),
            hourly.alias("hourly"),
            place.alias("place"),
        )
        .where(where)
        .alias("ranked")
    )
    r = ranked.c
    query = (
        peewee.Select(
            [ranked],
            [
                r.org,
                peewee.fn.MAX(peewee.Case(None, [(r.place == 1, r.value)])),
                peewee.fn.MAX(peewee.Case(None, [(r.hourly == 1, r.value)])),
                peewee.fn.SUM(r.hourly * r.value),
                peewee.fn.SUM(r.hourly),
            ],
        )
        .group_by(r.org)
        .order_by(r.org)
    )
    for org_id, last, peak, added, hours in query.tuples().iterator(database):
        n = int(hours)
        mean = int(added) / n if n else None
        peak = None if peak is None else int(peak)
        yield Figures(str(org_id), int(last), peak, mean, int(added), n)


def what_if(
    database: peewee.Database,
    event_name: str,
    start: datetime,
    end: datetime,
    organization_id: str | None = None,
) -> list[Figures]:
    """Each organization's figures over [start, end), by organization id."""
    return list(_figures(database, _delivered(event_name, start, end, organization_id)))


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

"""The search for missed hours: which organization-hours of a window lack a covered report.

The full scan the catch-up job (tasks/catchup.py) runs at start-up and as a safety net, and
``sensormeter backfill`` runs on demand; the hourly catch-up runs it only where its
completeness record cannot answer (tasks/completeness.py). See catchup.py for the rules.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

import peewee

from ..hours import format_hour, hour_start
from ..ledger import history, past
from ..models import MeterReport, tuples, utcnow
from ..settings import Settings
from ..usage import UsageSource, iter_billable_chunks
from .recovery import stale_after

# Decided hours: sent or rejected (Stripe's answer is final), held (a recount or a release
# sends it), quarantined (a release sends it) or superseded. Catch-up could not send them, and
# counting them as missing would report the hour unreported forever.
DONE = (
    MeterReport.SENT,
    MeterReport.REJECTED,
    MeterReport.HELD,
    MeterReport.QUARANTINED,
    MeterReport.SUPERSEDED,
)


def hours_between(first: datetime, last: datetime) -> list[datetime]:
    """Every UTC hour from ``first`` to ``last``, both included."""
    hours, hour = [], hour_start(first)
    while hour <= last:
        hours.append(hour)
        hour += timedelta(hours=1)
    return hours


def catchup_window(settings: Settings, now: datetime, *, include_current: bool) -> list[datetime]:
    """The hours catch-up looks at: the last ``catchup_hours``, the current one optionally."""
    current = hour_start(now)
    last = current if include_current else current - timedelta(hours=1)
    first = current - timedelta(hours=settings.catchup_hours)
    return hours_between(first, last) if settings.catchup_hours else []


def _as_datetime(value: Any) -> datetime:
    # SQLite hands aggregates back as text; PostgreSQL as datetimes.
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


def find_gaps(
    event_name: str,
    organization_ids: Sequence[str],
    hours: Sequence[datetime],
    stale_before: datetime | None = None,
    *,
    billable_now: Collection[str] | None = None,
    unsettled: set[datetime] | None = None,
) -> dict[datetime, list[str]]:
    """Hours (among ``hours``) each organization lacks a covered hourly report for.

    A pending row covers its hour only while it was updated at or after ``stale_before``
    (always, when None). One aggregate query for the chunk; only organizations it shows
    incomplete are read in detail.

    Which hours an organization owes: where the billable history answers for it
    (:meth:`past.Spans.knows`), the hours of its intervals, and no other; elsewhere, the
    hours since the first one sensormeter reported for it, if it is billable now
    (``billable_now``; None: all are). An organization with neither is never caught up
    (first deployment). The history is read for the incomplete organizations only.

    With ``unsettled`` (a set), the hours where some organization has a gap or a row not yet
    decided (a pending one: DONE says which are) are added to it, so that the others can be
    recorded as verified complete (tasks/completeness.py); organizations with a pending row
    are then read in detail too.
    """
    if not organization_ids or not hours:
        return {}
    first, last = hours[0], hours[-1]
    org = MeterReport.organization_id
    hourly = (
        (MeterReport.kind == MeterReport.HOURLY)
        & (MeterReport.event_name == event_name)
        & org.in_(list(organization_ids))
    )
    in_window = hourly & (MeterReport.period_hour >= first) & (MeterReport.period_hour <= last)
    live = MeterReport.status == MeterReport.PENDING
    if stale_before is not None:
        live &= MeterReport.updated_at >= stale_before
    is_covered = MeterReport.status.in_(DONE) | live
    covered = peewee.Case(None, [(is_covered, 1)], 0)
    decided = peewee.Case(None, [(MeterReport.status.in_(DONE), 1)], 0)
    summary = tuples(
        MeterReport.select(
            org,
            peewee.fn.MIN(MeterReport.period_hour),
            peewee.fn.SUM(covered),
            peewee.fn.SUM(decided),
        )
        .where(in_window)
        .group_by(org)
    )
    complete, settled = set(), set()
    for o, earliest, n, d in summary:
        if _as_datetime(earliest) == first:
            if n == len(hours):
                complete.add(o)
            if d == len(hours):
                settled.add(o)
    suspects = [o for o in organization_ids if o not in complete]
    detailed = suspects
    if unsettled is not None:
        detailed = [o for o in organization_ids if o not in settled]
    if not detailed:
        return {}
    seen: dict[str, dict[datetime, bool]] = defaultdict(dict)
    for o, hour, done, final in tuples(
        MeterReport.select(org, MeterReport.period_hour, covered, decided).where(
            in_window & org.in_(detailed)
        )
    ):
        seen[o][_as_datetime(hour)] = bool(done)
        if unsettled is not None and not final:
            unsettled.add(_as_datetime(hour))
    if not suspects:
        return {}
    earlier = {
        o
        for (o,) in tuples(
            MeterReport.select(org)
            .where(hourly & org.in_(suspects) & (MeterReport.period_hour < first))
            .group_by(org)
        )
    }
    spans = past.spans(suspects, first, last)
    gaps: dict[datetime, list[str]] = defaultdict(list)
    for o in suspects:
        floor: datetime | None = None
        if billable_now is None or o in billable_now:
            if o in earlier:
                floor = first
            elif seen[o]:
                floor = min(seen[o])  # the first hour sensormeter reported for it
        for hour in hours:
            if seen[o].get(hour):
                continue
            if spans.knows(o, hour):
                owed = spans.billable(o, hour)
            else:
                # Never reported: a first deployment does not bill history.
                owed = floor is not None and hour >= floor
            if owed:
                gaps[hour].append(o)
                if unsettled is not None:
                    unsettled.add(hour)
    return dict(gaps)


def _chunks(
    source: UsageSource,
    settings: Settings,
    first: datetime,
    last: datetime,
    organization_ids: Sequence[str] | None,
) -> Iterator[tuple[list[str], set[str]]]:
    """Chunks of organizations to search, each with those of them billable now.

    The organizations billable now, then those the billable history has billable at some
    hour of first..last that are not billable now (canceled since, say).
    """
    if organization_ids is not None:
        if organization_ids:
            yield list(organization_ids), set(source.billable_customers(list(organization_ids)))
        return
    for chunk in iter_billable_chunks(source, settings.chunk_size):
        yield chunk, set(chunk)
    after: str | None = None
    while True:
        chunk = history.organizations_between(first, last, after, settings.chunk_size)
        if not chunk:
            return
        now = source.billable_customers(chunk)
        gone = [o for o in chunk if o not in now]
        if gone:
            yield gone, set()
        if len(chunk) < settings.chunk_size:
            return
        after = chunk[-1]


def iter_gaps(
    source: UsageSource,
    settings: Settings,
    hours: Sequence[datetime],
    organization_ids: Sequence[str] | None = None,
    unsettled: set[datetime] | None = None,
) -> Iterator[tuple[str, list[str]]]:
    """Yield (hour label, organizations) to report, chunk by chunk.

    The organizations billable now and those the billable history has billable in the
    window (all of ``organization_ids``, when given); see :func:`find_gaps` for which hours
    each one owes, and for ``unsettled``.
    """
    if not hours:
        return
    stale_before = utcnow() - stale_after(settings)
    for chunk, billable_now in _chunks(source, settings, hours[0], hours[-1], organization_ids):
        gaps = find_gaps(
            settings.meter_event_name,
            chunk,
            hours,
            stale_before,
            billable_now=billable_now,
            unsettled=unsettled,
        )
        for hour in sorted(gaps):
            yield format_hour(hour), gaps[hour]

"""Completeness record: the hours of the catch-up window verified complete, and the cheap check.

An hour is **verified complete** when every organization that owed it has a decided hourly
row (sent, rejected, held, quarantined or superseded: gaps.DONE), not merely a live
pending one. Only hours a complete fan-out marked (``*hourly-runs``) are ever verified: there
the billable history is authoritative (an interval is never bridged over such an hour), so
the set of organizations that owed the hour cannot grow afterwards. The hourly catch-up then
reads only what is new (:class:`IncrementalCheck`):

- each hour marked but not yet verified (normally the one that just ended): one set-based
  query, the intervals covering the hour anti-joined with that hour's decided rows, reading
  the rows created since a ledger id noted before the hour began (a *mark*), never the
  fleet's older rows;
- the organizations the history does not know at such an hour (their first interval starts
  later) go through :func:`gaps.find_gaps`, as do the hours no run marked (an outage),
  over the whole fleet, chunk by chunk;
- a verified hour can come undone when a decided row goes back to failed (a held or
  quarantined row released, ``retry-failed``) or a pending row goes stale: one query on the
  status index finds those rows in the window, whatever the hour.

A row deleted from a verified hour is seen only by a full scan: at the scheduler's start,
by ``sensormeter backfill`` and, as a safety net, every :func:`full_scan_every` (a day, or half
the window if that is shorter). The record lives in Redis: a flush loses it with the queued
jobs, and the next catch-up then scans in full (the scheduler's restart queues one anyway).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import peewee
import redis

from ..hours import format_hour, hour_start, parse_hour
from ..keys import catchup_verified_key
from ..ledger import history
from ..models import BillableInterval, MeterReport
from ..settings import Settings
from ..usage import UsageSource
from .gaps import DONE, find_gaps, iter_gaps

# A mark (ledger id) serves an hour only if it was read this long before the hour began:
# a row of the hour can only be created once the hour has begun, by a clock this close.
MARK_MARGIN = timedelta(minutes=5)
_MARKS_KEPT = 120  # one per catch-up: five days of hourly marks
_VERSION = 1
_JOIN_MEMORY = "64MB"  # PostgreSQL's work_mem for the one join (see undecided_owed)
_PSEUDO = "*%"  # the history's pseudo-organizations ('*hourly-runs'): no organization id


def full_scan_every(settings: Settings) -> timedelta:
    """How often the hourly catch-up scans in full anyway: a day, or half the window."""
    return timedelta(hours=min(24, max(1, settings.catchup_hours // 2)))


@dataclass
class Record:
    """The verified hours of one meter and queue, and the ledger ids noted when."""

    full_at: float  # unix time the last full scan began
    verified: set[datetime] = field(default_factory=set)
    marks: list[tuple[float, int]] = field(default_factory=list)  # (unix time, max ledger id)

    def mark_for(self, hour: datetime) -> int | None:
        """The highest ledger id noted before ``hour`` began (with the margin), or None."""
        before = (hour - MARK_MARGIN).replace(tzinfo=UTC).timestamp()
        found = [ledger_id for at, ledger_id in self.marks if at <= before]
        return max(found) if found else None

    def note(self, at: float, ledger_id: int) -> None:
        """Keep a mark: the highest ledger id at unix time ``at``."""
        self.marks = [*self.marks, (at, ledger_id)][-_MARKS_KEPT:]


def load(connection: redis.Redis, settings: Settings) -> Record | None:
    """The record, or None (never written, lost with a Redis flush, or of another release)."""
    raw = connection.get(catchup_verified_key(settings.queue_name, settings.meter_event_name))
    if raw is None:
        return None
    try:
        data = json.loads(raw)
        if data.get("version") != _VERSION:
            return None
        return Record(
            float(data["full_at"]),
            {parse_hour(label) for label in data["verified"]},
            [(float(at), int(ledger_id)) for at, ledger_id in data["marks"]],
        )
    except (ValueError, KeyError, TypeError):
        return None


def save(
    connection: redis.Redis, settings: Settings, record: Record, hours: Sequence[datetime]
) -> None:
    """Store the record, keeping only the verified hours still in the window ``hours``."""
    window = set(hours)
    data = {
        "version": _VERSION,
        "full_at": record.full_at,
        "verified": sorted(format_hour(h) for h in record.verified if h in window),
        "marks": record.marks,
    }
    connection.set(
        catchup_verified_key(settings.queue_name, settings.meter_event_name), json.dumps(data)
    )


def marked_hours(hours: Sequence[datetime]) -> set[datetime]:
    """The hours among ``hours`` a complete hourly fan-out recorded (the history answers)."""
    if not hours:
        return set()
    wanted = set(hours)
    found: set[datetime] = set()
    for first, last in history.recorded_runs(hours[0], hours[-1]):
        hour = first
        while hour <= last:
            if hour in wanted:
                found.add(hour)
            hour += timedelta(hours=1)
    return found


def max_ledger_id(database: peewee.Database) -> int:
    """The highest ledger row id now (0 for an empty ledger)."""
    row = database.execute_sql(f"SELECT MAX(id) FROM {MeterReport._meta.table_name}").fetchone()
    return int(row[0] or 0)


def _stored(database: peewee.Database, moment: datetime) -> Any:
    # SQLite holds datetimes as peewee writes them, in text.
    return str(moment) if isinstance(database, peewee.SqliteDatabase) else moment


def _moment(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


def _decided_list(database: peewee.Database) -> tuple[str, list[str]]:
    return ", ".join([database.param] * len(DONE)), list(DONE)


def undecided_owed(
    database: peewee.Database, event_name: str, hour: datetime, after_id: int | None
) -> Iterator[tuple[str, str | None, datetime | None]]:
    """Organizations the history has billable at ``hour`` without a decided row for it.

    Yields (organization, status of its row or None, the row's updated_at), by organization.
    With ``after_id``, only rows created after that ledger id are read: every row of the hour
    is (see MARK_MARGIN), so the query reads the rows of the last hours, not the fleet's
    history; without one, the database picks its way (the (organization_id, period_hour) index).
    """
    p = database.param
    decided, decided_params = _decided_list(database)
    newer = f" AND r.id > {p}" if after_id is not None else ""
    sql = (
        f"SELECT i.organization_id, r.status, r.updated_at"
        f" FROM {BillableInterval._meta.table_name} i"
        f" LEFT JOIN {MeterReport._meta.table_name} r ON r.organization_id = i.organization_id"
        f" AND r.period_hour = {p} AND r.kind = {p} AND r.event_name = {p}{newer}"
        f" WHERE i.first_hour <= {p} AND i.last_hour >= {p}"
        f" AND i.organization_id NOT LIKE {p}"
        f" AND (r.id IS NULL OR r.status NOT IN ({decided}))"
        f" ORDER BY i.organization_id"
    )
    params = [
        _stored(database, hour),
        MeterReport.HOURLY,
        event_name,
        *([after_id] if after_id is not None else []),
        _stored(database, hour),
        _stored(database, hour),
        _PSEUDO,
        *decided_params,
    ]
    with database.atomic():
        if after_id is not None and isinstance(database, peewee.PostgresqlDatabase):
            # The intervals reaching the newest hour are past the planner's statistics, so it
            # expects one and probes the ledger's index once per organization: a cost that
            # grows with the ledger's length. A hash join reads only the rows after the mark.
            database.execute_sql("SET LOCAL enable_nestloop = off")
            # The hash holds every organization of the hour (about 50 MB at 1,000,000): in
            # the default 4 MB it spills to disk in batches, a quarter slower.
            database.execute_sql(f"SET LOCAL work_mem = '{_JOIN_MEMORY}'")
        cursor = database.execute_sql(sql, params)
        last = None
        while rows := cursor.fetchmany(5000):
            for org, status, updated in rows:
                if org != last:  # two intervals covering one hour: one answer
                    yield org, status, None if updated is None else _moment(updated)
                last = org


def uncovered_rows(
    database: peewee.Database, event_name: str, hours: Sequence[datetime], stale_before: datetime
) -> dict[datetime, set[str]]:
    """Hourly rows of ``hours``'s range that cover nothing now: failed, or pending and stale.

    Read through the status index: failed and pending rows are few, whatever the ledger's
    length (a decided row that goes back to failed: a release, ``retry-failed``).
    """
    if not hours:
        return {}
    p = database.param
    cursor = database.execute_sql(
        f"SELECT organization_id, period_hour FROM {MeterReport._meta.table_name}"
        f" WHERE status IN ({p}, {p}) AND kind = {p} AND event_name = {p}"
        f" AND period_hour >= {p} AND period_hour <= {p}"
        f" AND (status = {p} OR updated_at < {p})",
        [
            MeterReport.FAILED,
            MeterReport.PENDING,
            MeterReport.HOURLY,
            event_name,
            _stored(database, hours[0]),
            _stored(database, hours[-1]),
            MeterReport.FAILED,
            _stored(database, stale_before),
        ],
    )
    found: dict[datetime, set[str]] = defaultdict(set)
    for org, hour in cursor.fetchall():
        found[hour_start(_moment(hour))].add(org)
    return found


def newcomers(database: peewee.Database, since: datetime) -> list[str]:
    """Organizations with an interval starting after ``since`` (the history may not know them
    at ``since``): a scan of the history table, never of the ledger."""
    p = database.param
    cursor = database.execute_sql(
        f"SELECT DISTINCT organization_id FROM {BillableInterval._meta.table_name}"
        f" WHERE first_hour > {p} AND organization_id NOT LIKE {p}"
        f" ORDER BY organization_id",
        [_stored(database, since), _PSEUDO],
    )
    return [org for (org,) in cursor.fetchall()]


def ranges(hours: Sequence[datetime]) -> list[list[datetime]]:
    """Sorted hours split into runs of consecutive hours."""
    runs: list[list[datetime]] = []
    for hour in sorted(hours):
        if runs and runs[-1][-1] + timedelta(hours=1) == hour:
            runs[-1].append(hour)
        else:
            runs.append([hour])
    return runs


@dataclass
class IncrementalCheck:
    """The hourly catch-up when the record is usable: only new hours and changed rows are read.

    Iterate :meth:`gaps`; afterwards ``verified`` holds the hours now verified complete.
    """

    source: UsageSource
    settings: Settings
    database: peewee.Database
    record: Record
    hours: Sequence[datetime]  # the window, oldest first, all before the current hour
    stale_before: datetime
    verified: set[datetime] = field(default_factory=set)
    checked: list[datetime] = field(default_factory=list)  # hours verified by this check
    rechecked: int = 0  # organizations read again (newcomers and uncovered rows)

    def gaps(self) -> Iterator[tuple[str, list[str]]]:
        """Yield (hour label, organizations) to report, at most a chunk at a time."""
        settings, event = self.settings, self.settings.meter_event_name
        marked = marked_hours(self.hours)
        verified = self.record.verified & marked
        to_check = sorted(marked - verified)
        unsettled: set[datetime] = set()
        found: dict[datetime, set[str]] = defaultdict(set)

        # Verified hours whose rows went back to failed (or pending and stale).
        uncovered = uncovered_rows(self.database, event, self.hours, self.stale_before)
        for hour, orgs in uncovered.items():
            if hour in verified:
                self._search(sorted(orgs), [hour], found, None)
        # Organizations the history does not know yet at the hours to check.
        if to_check:
            hours = [h for h in self.hours if h >= to_check[0]]
            self._search(newcomers(self.database, to_check[0]), hours, found, unsettled)
        for hour in sorted(found):
            if hour in verified or hour in to_check:
                yield from self._chunked(hour, sorted(found[hour]))
        # Hours no run marked: the whole fleet, as the full scan does, for those hours only.
        for stretch in ranges([h for h in self.hours if h not in marked]):
            yield from iter_gaps(self.source, settings, stretch)
        # The marked hours not verified yet: one set-based query each.
        for hour in to_check:
            batch: list[str] = []
            for org, status, updated in undecided_owed(
                self.database, event, hour, self.record.mark_for(hour)
            ):
                unsettled.add(hour)  # not verified yet: checked again next time
                if status == MeterReport.PENDING and updated and updated >= self.stale_before:
                    continue  # covered by a job in flight
                if org in found.get(hour, ()):
                    continue
                batch.append(org)
                if len(batch) >= settings.chunk_size:
                    yield format_hour(hour), batch
                    batch = []
            if batch:
                yield format_hour(hour), batch
        self.checked = [h for h in to_check if h not in unsettled]
        self.verified = verified | set(self.checked)

    def _search(
        self,
        organizations: list[str],
        hours: list[datetime],
        found: dict[datetime, set[str]],
        unsettled: set[datetime] | None,
    ) -> None:
        """find_gaps over a few organizations, chunk by chunk, into ``found``."""
        size = self.settings.chunk_size
        for i in range(0, len(organizations), size):
            chunk = organizations[i : i + size]
            self.rechecked += len(chunk)
            gaps = find_gaps(
                self.settings.meter_event_name,
                chunk,
                hours,
                self.stale_before,
                billable_now=set(self.source.billable_customers(chunk)),
                unsettled=unsettled,
            )
            for hour, orgs in gaps.items():
                found[hour].update(orgs)

    def _chunked(self, hour: datetime, orgs: list[str]) -> Iterator[tuple[str, list[str]]]:
        size = self.settings.chunk_size
        for i in range(0, len(orgs), size):
            yield format_hour(hour), orgs[i : i + size]

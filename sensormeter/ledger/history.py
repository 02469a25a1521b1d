"""Billable history: the stretches of UTC hours each organization was billable, and to whom.

The hourly fan-out records each chunk's billable organizations at its hour (:func:`record`),
then marks the hour as recorded for the whole fleet (:func:`mark_run`). An interval grows by
one hour per run; it also bridges hours when no run recorded anything (workers or scheduler
down), up to the catch-up window, so catch-up still finds those hours. An hour a run did
record without the organization is never bridged: it was not billable then.

Reports of past hours, catch-up and backfill read it through ``past.py``; see
docs/architecture.md and docs/operations.md, "Billable history".
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import peewee

from ..hours import hour_start
from ..models import BillableInterval, tuples, utcnow
from .identifiers import organization_id_problem

HOUR = timedelta(hours=1)
# The hours a complete fan-out recorded, kept as intervals of this pseudo-organization: no
# organization id can take this form (organization_id_problem refuses the leading '*').
RUNS = "*hourly-runs"
_BATCH = 500  # ids per UPDATE (an old SQLite takes 999 parameters at most)
_COLUMNS = (
    BillableInterval.id,
    BillableInterval.organization_id,
    BillableInterval.stripe_customer_id,
    BillableInterval.first_hour,
    BillableInterval.last_hour,
)


def _hour(value: Any) -> datetime:
    # SQLite may hand datetimes back as text.
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


@dataclass(frozen=True)
class Interval:
    """Hours ``first_hour``..``last_hour`` (both included) billable under ``customer``."""

    organization_id: str
    customer: str
    first_hour: datetime
    last_hour: datetime
    id: int = 0

    def covers(self, hour: datetime) -> bool:
        """Whether ``hour`` (an hour start) is one of the interval's hours."""
        return self.first_hour <= hour <= self.last_hour


def _read(condition: Any) -> list[Interval]:
    query = BillableInterval.select(*_COLUMNS).where(condition).order_by(BillableInterval.id)
    return [
        Interval(org, customer, _hour(first), _hour(last), int(row_id))
        for row_id, org, customer, first, last in tuples(query)
    ]


def _among(database: peewee.Database, values: Sequence[Any]) -> tuple[str, list[Any]]:
    """``IN (...)`` for SQLite; ``= ANY(array)`` for PostgreSQL, one parameter, no parsing."""
    if isinstance(database, peewee.PostgresqlDatabase):
        return f"= ANY({database.param})", [list(values)]
    return f"IN ({', '.join([database.param] * len(values))})", list(values)


def _stored(database: peewee.Database, moment: datetime) -> Any:
    """A datetime as a parameter: SQLite holds them as peewee writes them, in text."""
    return str(moment) if isinstance(database, peewee.SqliteDatabase) else moment


def _recent(
    database: peewee.Database, organization_ids: list[str], since: datetime, until: datetime
) -> list[Interval]:
    """Intervals of these organizations ending at ``since`` or later, starting by ``until``.

    Straight to the driver: peewee builds a 1,000-id IN list and converts each datetime
    value by value, which cost more than the query itself (see docs/performance.md); so
    does psycopg parsing 1,000 placeholders, hence one array parameter on PostgreSQL.
    """
    among, params = _among(database, organization_ids)
    p = database.param
    cursor = database.execute_sql(
        f"SELECT id, organization_id, stripe_customer_id, first_hour, last_hour"
        f" FROM {BillableInterval._meta.table_name} WHERE organization_id {among}"
        f" AND last_hour >= {p} AND first_hour <= {p}",
        [*params, _stored(database, since), _stored(database, until)],
    )
    return [
        Interval(org, customer, _hour(first), _hour(last), int(row_id))
        for row_id, org, customer, first, last in cursor.fetchall()
    ]


@dataclass(frozen=True)
class Recorded:
    """What one :func:`record` call did: intervals extended, started, already covering."""

    extended: int = 0
    started: int = 0
    unchanged: int = 0


def record(
    database: peewee.Database, customers: Mapping[str, str], hour: datetime, *, bridge_hours: int
) -> Recorded:
    """Record that ``customers``' organizations are billable at ``hour`` under those customers.

    An organization whose latest interval has the same customer and ends the hour before (or
    ends at most ``bridge_hours`` earlier, over hours no run recorded) gets ``hour`` added;
    one already covering ``hour`` is left alone (a run repeated in the hour changes nothing);
    any other starts a new interval. One read, one UPDATE per 500 extended intervals and one
    INSERT, whatever the chunk's size.

    Args:
        database: the open database.
        customers: each billable organization's Stripe customer (a blank one is not billable).
        hour: the hour of the run (any moment in it).
        bridge_hours: the catch-up window (``SENSORMETER_CATCHUP_HOURS``).
    """
    usable = {
        org: customer
        for org, customer in customers.items()
        if organization_id_problem(org) is None and isinstance(customer, str) and customer.strip()
    }
    return _record(database, usable, hour_start(hour), bridge_hours)


def mark_run(database: peewee.Database, hour: datetime) -> None:
    """Mark ``hour`` as recorded for the whole fleet (after the fan-out's last chunk)."""
    _record(database, {RUNS: ""}, hour_start(hour), 0)


def _record(
    database: peewee.Database, customers: Mapping[str, str], hour: datetime, bridge_hours: int
) -> Recorded:
    if not customers:
        return Recorded()
    found = _recent(database, sorted({*customers, RUNS}), hour - HOUR * (bridge_hours + 1), hour)
    runs = [i for i in found if i.organization_id == RUNS]
    mine: dict[str, list[Interval]] = defaultdict(list)
    for interval in found:
        mine[interval.organization_id].append(interval)
    extend: list[int] = []
    start: list[tuple[str, str]] = []
    unchanged = 0
    for organization, customer in sorted(customers.items()):
        intervals = mine.get(organization, [])
        if any(i.covers(hour) for i in intervals):
            unchanged += 1
            continue
        latest = max(intervals, key=lambda i: (i.last_hour, i.id), default=None)
        if latest is not None and latest.customer == customer and _bridges(latest, hour, runs):
            extend.append(latest.id)
        else:
            start.append((organization, customer))
    now = utcnow()
    with database.atomic():
        for i in range(0, len(extend), _BATCH):
            among, params = _among(database, extend[i : i + _BATCH])
            p = database.param
            database.execute_sql(
                f"UPDATE {BillableInterval._meta.table_name} SET last_hour = {p},"
                f" updated_at = {p} WHERE id {among}"
                f" AND last_hour < {p}",  # a concurrent run got there first: no change
                [_stored(database, hour), _stored(database, now), *params, _stored(database, hour)],
            )
        if start:
            _insert(database, [(o, c, hour, hour, now) for o, c in start])
    return Recorded(len(extend), len(start), unchanged)


def _insert(database: peewee.Database, rows: list[tuple[str, str, Any, Any, Any]]) -> None:
    """Insert new intervals through the driver (peewee builds big INSERTs value by value)."""
    insert = (
        f"INSERT INTO {BillableInterval._meta.table_name} (organization_id,"
        " stripe_customer_id, first_hour, last_hour, updated_at)"
    )
    cursor: Any = database.cursor()
    if isinstance(database, peewee.PostgresqlDatabase):
        # One statement, one array parameter per column, however many rows.
        cursor.execute(
            f"{insert} SELECT * FROM unnest(%s::text[], %s::text[], %s::timestamp[],"
            " %s::timestamp[], %s::timestamp[])",
            [list(column) for column in zip(*rows, strict=True)],
        )
        return
    rows = [
        (o, c, _stored(database, first), _stored(database, last), _stored(database, at))
        for o, c, first, last, at in rows
    ]
    marks = ", ".join([database.param] * 5)
    cursor.executemany(f"{insert} VALUES ({marks})", rows)


def _bridges(latest: Interval, hour: datetime, runs: Sequence[Interval]) -> bool:
    """Whether ``latest`` may grow to ``hour``: no run recorded the hours between them."""
    after = latest.last_hour + HOUR
    if after == hour:
        return True
    return not any(r.first_hour < hour and r.last_hour >= after for r in runs)


# Reads -----------------------------------------------------------------------------------


def intervals(
    organization_id: str, since: datetime | None = None, until: datetime | None = None
) -> list[Interval]:
    """An organization's intervals overlapping since..until (both optional), oldest first."""
    condition = BillableInterval.organization_id == organization_id
    if since is not None:
        condition &= BillableInterval.last_hour >= hour_start(since)
    if until is not None:
        condition &= BillableInterval.first_hour <= hour_start(until)
    return sorted(_read(condition), key=lambda i: (i.first_hour, i.id))


def overlapping(
    organization_ids: Sequence[str], since: datetime, until: datetime
) -> list[Interval]:
    """The intervals of these organizations (``RUNS`` may be one) overlapping since..until."""
    if not organization_ids:
        return []
    return _read(
        BillableInterval.organization_id.in_(list(organization_ids))
        & (BillableInterval.last_hour >= hour_start(since))
        & (BillableInterval.first_hour <= hour_start(until))
    )


def recorded_runs(since: datetime, until: datetime) -> list[tuple[datetime, datetime]]:
    """The stretches of hours (overlapping since..until) a complete hourly fan-out recorded."""
    return [(i.first_hour, i.last_hour) for i in intervals(RUNS, since, until)]


def customers_at(organization_ids: Sequence[str], hour: datetime) -> dict[str, str]:
    """Each organization billable at ``hour`` (per the history) and its customer then."""
    if not organization_ids:
        return {}
    hour = hour_start(hour)
    found: dict[str, str] = {}
    for interval in _read(
        BillableInterval.organization_id.in_(list(organization_ids))
        & (BillableInterval.first_hour <= hour)
        & (BillableInterval.last_hour >= hour)
    ):
        found.setdefault(interval.organization_id, interval.customer)  # the first record wins
    return found


def members_at(customers: Iterable[str], hour: datetime) -> dict[str, list[str]]:
    """The organizations billable under each customer at ``hour`` (per the history)."""
    wanted = sorted(set(customers))
    if not wanted:
        return {}
    hour = hour_start(hour)
    members: dict[str, set[str]] = defaultdict(set)
    for interval in _read(
        BillableInterval.stripe_customer_id.in_(wanted)
        & (BillableInterval.last_hour >= hour)
        & (BillableInterval.first_hour <= hour)
        & (BillableInterval.organization_id != RUNS)
    ):
        members[interval.customer].add(interval.organization_id)
    return {customer: sorted(orgs) for customer, orgs in members.items()}


def known_since(organization_ids: Sequence[str]) -> dict[str, datetime]:
    """The first hour the history recorded each organization billable (absent: never)."""
    if not organization_ids:
        return {}
    org = BillableInterval.organization_id
    query = (
        BillableInterval.select(org, peewee.fn.MIN(BillableInterval.first_hour))
        .where(org.in_(list(organization_ids)))
        .group_by(org)
    )
    return {o: _hour(first) for o, first in tuples(query)}


def organizations_between(
    first: datetime, last: datetime, after: str | None, limit: int
) -> list[str]:
    """Organizations with an interval overlapping first..last, ids above ``after``, ascending."""
    org = BillableInterval.organization_id
    condition = (
        (BillableInterval.last_hour >= first)
        & (BillableInterval.first_hour <= last)
        & (org != RUNS)
    )
    if after is not None:
        condition &= org > after
    query = BillableInterval.select(org).where(condition).group_by(org).order_by(org).limit(limit)
    return [o for (o,) in tuples(query)]

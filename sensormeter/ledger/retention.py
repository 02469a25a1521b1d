"""Ledger retention: removing what is older than ``SENSORMETER_RETENTION_DAYS``, in small batches.

What ages out (docs/operations.md, "Ledger retention"):

- ledger rows (``meter_reports``) whose stamp (``measured_at``, inside the hour or period the
  row stands for) is before the first kept hour, whatever their status: a row that old cannot
  be sent (Stripe refuses events older than 35 days), so a failed, held or quarantined one is
  only a record of usage that went unbilled, and the removal says how many there were;
- billable-history intervals (``sensormeter_billable_history``, the ``*hourly-runs`` records
  included) that ended before it; an interval that reaches into the kept hours stays whole;
- quarantines released before it; an open quarantine stays, however old.

The first kept hour is a whole hour, so an hour is either kept or removed whole. Rows are
found through the ``measured_at`` index, oldest first, a batch per statement: the cost of a
run is proportional to what it removes, and a run with nothing to remove is one index probe.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import peewee

from ..hours import hour_start
from ..models import BillableInterval, MeterReport, Quarantine

BATCH = 2_000  # rows per DELETE: each a short transaction holding few row locks
# A run stops starting batches after this many seconds; the next run goes on. Ten minutes an
# hour removes several times what a 1,000,000-organization fleet adds (docs/performance.md).
RUN_SECONDS = 600.0
UNDELIVERED = (
    MeterReport.PENDING,
    MeterReport.FAILED,
    MeterReport.HELD,
    MeterReport.QUARANTINED,
)


def kept_since(retention_days: int, now: datetime) -> datetime | None:
    """The first UTC hour the ledger keeps (naive), or None when it keeps everything."""
    if retention_days <= 0:
        return None
    return hour_start(now) - timedelta(days=retention_days)


def notice(retention_days: int, first_kept: datetime) -> str:
    """The sentence a read that reaches back before the first kept hour prints."""
    return (
        f"the ledger keeps {retention_days} days: hours before {first_kept:%Y-%m-%d %H:00} UTC "
        "were removed (SENSORMETER_RETENTION_DAYS), so nothing is known of them here"
    )


@dataclass(frozen=True)
class Reach:
    """How far back the ledger reaches: what ``explain``, ``whatif`` and ``reconcile`` ask."""

    retention_days: int  # 0: the ledger keeps everything
    first_kept: datetime | None  # the first kept hour; None: everything is kept

    @classmethod
    def at(cls, retention_days: int, now: datetime) -> Reach:
        """The reach of a ledger kept ``retention_days`` days (0: all), seen at ``now``."""
        return cls(retention_days, kept_since(retention_days, now))

    def removed(self, hour: datetime) -> bool:
        """Whether ``hour`` is before the first kept hour."""
        return self.first_kept is not None and hour < self.first_kept

    def notice(self, start: datetime) -> str | None:
        """The notice for a range starting at ``start``, or None when it is all kept."""
        if self.first_kept is None or start >= self.first_kept:
            return None
        return notice(self.retention_days, self.first_kept)

    def as_dict(self, start: datetime) -> dict[str, Any]:
        """JSON-ready facts for a range starting at ``start``."""
        first = self.first_kept
        return {
            "retention_days": self.retention_days,
            "kept_since": None if first is None else first.isoformat() + "+00:00",
            "notice": self.notice(start),
        }


@dataclass
class Pruned:
    """What one prune removed, and whether it reached everything older than ``before``."""

    before: datetime
    reports: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    history: int = 0
    quarantines: int = 0
    batches: int = 0
    seconds: float = 0.0
    complete: bool = True  # False: stopped at its time budget with older rows left

    @property
    def undelivered(self) -> int:
        """Removed rows that were never delivered (pending, failed, held, quarantined)."""
        return sum(n for s, n in self.by_status.items() if s in UNDELIVERED)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready figures."""
        return {
            "before": self.before.isoformat() + "+00:00",
            "reports": self.reports,
            "undelivered": self.undelivered,
            "by_status": dict(sorted(self.by_status.items())),
            "history": self.history,
            "quarantines": self.quarantines,
            "batches": self.batches,
            "seconds": round(self.seconds, 3),
            "complete": self.complete,
        }


def _oldest(database: peewee.Database, model: Any, condition: Any, order: Any, batch: int) -> Any:
    """The condition "id is one of the ``batch`` oldest rows matching ``condition``"."""
    ids = model.select(model.id).where(condition).order_by(order).limit(batch)
    if not isinstance(database, peewee.PostgresqlDatabase):
        return model.id.in_(ids)
    # Two prunes at once (two schedulers) share the work instead of queueing on each other's
    # row locks. ``= ANY(ARRAY(...))`` makes the ids a value computed first, then looked up
    # by primary key: with ``IN (...)`` the planner may hash-join against the whole table.
    ids = ids.for_update("FOR UPDATE SKIP LOCKED")
    return model.id == peewee.fn.ANY(peewee.fn.ARRAY(ids))


def remove_reports(database: peewee.Database, before: datetime, batch: int = BATCH) -> list[str]:
    """Remove one batch of the oldest ledger rows stamped before ``before``; their statuses."""
    oldest = _oldest(
        database, MeterReport, MeterReport.measured_at < before, MeterReport.measured_at, batch
    )
    query = MeterReport.delete().where(oldest).returning(MeterReport.status)
    with database.atomic():
        return [str(row[0]) for row in query.tuples().execute(database)]


def _remove_all(
    database: peewee.Database, model: Any, condition: Any, order: Any, batch: int
) -> int:
    """Remove every row matching ``condition``, a batch per transaction; how many."""
    removed = 0
    while True:
        oldest = _oldest(database, model, condition, order, batch)
        with database.atomic():
            n = int(model.delete().where(oldest).execute(database))
        removed += n
        if n < batch:
            return removed


def prune_reports(
    database: peewee.Database,
    before: datetime,
    *,
    batch: int = BATCH,
    budget_seconds: float | None = RUN_SECONDS,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Pruned:
    """Remove the ledger rows stamped before ``before``, batch by batch (idempotent).

    After each full batch it pauses as long as the batch took, so a large first run uses at
    most half of the database's time; it starts no batch after ``budget_seconds`` (None: no
    budget) and then says it is not ``complete``.
    """
    started = clock()
    pruned = Pruned(before)
    while True:
        began = clock()
        statuses = remove_reports(database, before, batch)
        took = clock() - began
        pruned.batches += 1
        pruned.reports += len(statuses)
        for status in statuses:
            pruned.by_status[status] = pruned.by_status.get(status, 0) + 1
        if len(statuses) < batch:
            break
        if budget_seconds is not None and clock() - started >= budget_seconds:
            pruned.complete = False
            break
        sleep(took)
    pruned.seconds = clock() - started
    return pruned


def prune_history(database: peewee.Database, before: datetime, batch: int = BATCH) -> int:
    """Remove billable intervals (and hourly-run records) that ended before ``before``.

    The table has about one row per organization, and no index leads with ``last_hour``:
    this reads it whole, so the hourly job runs it once a day.
    """
    condition = BillableInterval.last_hour < before
    return _remove_all(database, BillableInterval, condition, BillableInterval.id, batch)


def prune_quarantines(database: peewee.Database, before: datetime, batch: int = BATCH) -> int:
    """Remove quarantines released before ``before``; open ones stay whatever their age."""
    condition = Quarantine.released_at.is_null(False) & (Quarantine.released_at < before)
    return _remove_all(database, Quarantine, condition, Quarantine.id, batch)


def count_older(database: peewee.Database, before: datetime) -> dict[str, int]:
    """Ledger rows stamped before ``before``, by status (what a prune would remove)."""
    query = (
        MeterReport.select(MeterReport.status, peewee.fn.COUNT(MeterReport.id))
        .where(MeterReport.measured_at < before)
        .group_by(MeterReport.status)
    )
    return {str(s): int(n) for s, n in query.tuples().execute(database)}


def oldest_stamp(database: peewee.Database) -> datetime | None:
    """The stamp of the oldest ledger row (one index probe), or None for an empty ledger."""
    query = MeterReport.select(peewee.fn.MIN(MeterReport.measured_at))
    value = query.scalar(database)
    if value is None:
        return None
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment.replace(tzinfo=None)

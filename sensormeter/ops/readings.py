"""The numbers an operator watches, each read with one cheap, indexed query or Redis call.

``sensormeter metrics``, ``check`` and ``status`` read them here, fresh each time: nothing is
kept in the process, so any number of processes (forking workers, a host's web workers) can
serve them. Every ledger query takes the database as an argument and never binds the models,
so a host process that mounts the metrics app keeps its own binding.

Cost at 1,000,000 organizations (48 M rows in the default 48-hour window): counting the window
is one index-only range count on ``measured_at`` (365 ms at 4.9 M rows on PostgreSQL); every
other ledger read walks the ``status`` index over the few rows that are not ``sent``, or the
``measured_at`` index backwards to the newest hourly row. The fleet-wide search for missing
hours is never repeated here: the last catch-up's finding is read from Redis.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import peewee
import redis
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry
from rq_scheduler import Scheduler

from ..hours import hour_start
from ..models import MeterReport, open_database
from ..settings import Settings
from ..tasks.queue import make_queue
from ..tasks.schedule import (
    close_job_id,
    held_job_id,
    hourly_job_id,
    retention_job_id,
    sweep_job_id,
)

UNSENT = (MeterReport.PENDING, MeterReport.FAILED)  # waiting to be delivered
# Every status but sent (the rare ones, counted through the status index).
NOT_SENT = tuple(status for status in MeterReport.STATUSES if status != MeterReport.SENT)
# The scheduled jobs by the name metrics and check use, with their fixed ids.
SCHEDULED_JOBS = {
    "hourly": hourly_job_id,
    "sweep": sweep_job_id,
    "period_close": close_job_id,
    "held_recount": held_job_id,
    "retention": retention_job_id,
}
QUEUE_STATES = ("queued", "started", "scheduled", "failed")


def connect_database(url: str) -> peewee.Database:
    """Open ``DATABASE_URL`` for reading, without binding the models (a host keeps its own).

    Raises:
        ServiceUnavailable: the database does not answer, or the SQLite file does not exist
            (reading must never create one).
    """
    return open_database(url, create=False, bind=False)


def naive(value: Any) -> datetime | None:
    """A column value as a naive UTC datetime (SQLite returns aggregates as text)."""
    if value is None:
        return None
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment.replace(tzinfo=None)


def window_start(settings: Settings, now: datetime) -> datetime:
    """The start of the window the report counts cover: the catch-up window (at least 1 hour)."""
    return hour_start(now) - timedelta(hours=max(settings.catchup_hours, 1))


def window_counts(database: peewee.Database, since: datetime) -> dict[str, int]:
    """Ledger rows stamped (``measured_at``) since ``since``, by status; every status present.

    ``sent`` is the window's row count less the others: counting every row is an index-only
    scan of ``measured_at``, and the others are few and found through the ``status`` index,
    where a GROUP BY over the window reads every row of it (4x slower on PostgreSQL).
    """
    in_window = MeterReport.measured_at >= since
    counts = {status: 0 for status in MeterReport.STATUSES}
    with database.atomic():
        if isinstance(database, peewee.PostgresqlDatabase):
            # Both counts from one snapshot, or a row sent in between would count twice.
            database.execute_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        total = MeterReport.select(peewee.fn.COUNT(peewee.SQL("*"))).where(in_window)
        others = (
            MeterReport.select(MeterReport.status, peewee.fn.COUNT(peewee.SQL("*")))
            .where(MeterReport.status.in_(list(NOT_SENT)) & in_window)
            .group_by(MeterReport.status)
        )
        everything = int(total.scalar(database) or 0)
        for status, n in others.tuples().execute(database):
            counts[status] = int(n)
    counts[MeterReport.SENT] = everything - sum(counts[s] for s in NOT_SENT)
    return counts


def newest_hourly_delivery(
    database: peewee.Database, event_name: str, since: datetime
) -> datetime | None:
    """The stamp (``measured_at``) of the newest sent hourly report since ``since``, or None."""
    query = MeterReport.select(peewee.fn.MAX(MeterReport.measured_at)).where(
        (MeterReport.measured_at >= since)
        & (MeterReport.status == MeterReport.SENT)
        & (MeterReport.kind == MeterReport.HOURLY)
        & (MeterReport.event_name == event_name)
    )
    return naive(query.scalar(database))


def oldest_unsent(database: peewee.Database) -> datetime | None:
    """When the oldest pending or failed row of the whole ledger was created, or None."""
    query = MeterReport.select(peewee.fn.MIN(MeterReport.created_at)).where(
        MeterReport.status.in_(list(UNSENT))
    )
    return naive(query.scalar(database))


def count_status(database: peewee.Database, status: str) -> int:
    """Rows of the whole ledger in ``status`` (through its index: meant for the rare ones)."""
    query = MeterReport.select(peewee.fn.COUNT(peewee.SQL("*"))).where(MeterReport.status == status)
    return int(query.scalar(database) or 0)


def count_abandoned_pending(database: peewee.Database, before: datetime) -> int:
    """Pending rows untouched since ``before``: no job will finish them (recovery.stale_after)."""
    query = MeterReport.select(peewee.fn.COUNT(peewee.SQL("*"))).where(
        (MeterReport.status == MeterReport.PENDING) & (MeterReport.updated_at < before)
    )
    return int(query.scalar(database) or 0)


def registrations(connection: redis.Redis, queue_name: str) -> dict[str, datetime | None]:
    """Each scheduled job's next run (aware UTC), or None when it is not registered."""
    with connection.pipeline(transaction=False) as pipe:
        for job_id in SCHEDULED_JOBS.values():
            pipe.zscore(Scheduler.scheduled_jobs_key, job_id(queue_name))
        scores = pipe.execute()
    return {
        name: None if score is None else datetime.fromtimestamp(float(score), UTC)
        for name, score in zip(SCHEDULED_JOBS, scores, strict=True)
    }


def queue_jobs(settings: Settings, connection: redis.Redis) -> dict[str, int]:
    """Jobs of the reporting queue: queued, started, scheduled (retries waiting) and failed."""
    queue = make_queue(settings, connection)
    # Without RQ's cleanup: reading must not move jobs (the workers clean up on their own).
    return {
        "queued": queue.count,
        "started": StartedJobRegistry(queue=queue).get_job_count(cleanup=False),
        "scheduled": ScheduledJobRegistry(queue=queue).get_job_count(cleanup=False),
        "failed": FailedJobRegistry(queue=queue).get_job_count(cleanup=False),
    }

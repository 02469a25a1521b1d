"""The ledger prune: an hourly job that removes what is older than the retention.

It runs at minute 30 UTC (away from the fan-out at minute 0), removes the ledger rows older
than ``SENSORMETER_RETENTION_DAYS`` in batches within a time budget, and once a day (the run
of 03:30 UTC) the billable history and released quarantines older than that too
(sensormeter/ledger/retention.py says what ages out and why).
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

import peewee
import redis

from ..keys import retention_last_key, retention_lock_key
from ..ledger import retention
from ..logs import get_logger
from ..models import utcnow
from .envelope import JobRun, run_job

log = get_logger(__name__)

HISTORY_HOUR = 3  # the UTC hour whose run also prunes the billable history and quarantines
# A prune that died keeps the lock this long at most: past a run's budget and its last batch.
LOCK_SECONDS = int(retention.RUN_SECONDS) + 300
# Deletes the lock only if it is still this run's: one that expired may be another's now.
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end"


def prune_ledger() -> dict[str, Any]:
    """RQ job (scheduled hourly): remove ledger rows older than the retention; safe to rerun."""
    result: dict[str, Any] = run_job("prune_ledger", _prune)
    return result


def _prune(run: JobRun) -> dict[str, Any]:
    runtime = run.runtime
    settings = runtime.settings
    now = utcnow()
    before = retention.kept_since(settings.retention_days, now)
    if before is None:
        return {"retention_days": 0, "pruned": False}
    connection = runtime.redis
    lock, token = retention_lock_key(settings.queue_name), uuid.uuid4().hex
    if not connection.set(lock, token, nx=True, ex=LOCK_SECONDS):
        # Two schedulers queued it, or the last run is still at work: the next run goes on.
        log.info("retention.already_running", queue=settings.queue_name)
        return {"retention_days": settings.retention_days, "pruned": False}
    try:
        pruned = prune(runtime.database, before, with_history=now.hour == HISTORY_HOUR)
    finally:
        connection.eval(_RELEASE, 1, lock, token)
    remember(connection, settings.queue_name, settings.retention_days, now, pruned)
    figures = pruned.as_dict()
    if pruned.undelivered:
        log.warning(
            "retention.removed_undelivered",
            reports=pruned.undelivered,
            by_status=figures["by_status"],
            before=figures["before"],
        )
    if not pruned.complete:
        log.warning(
            "retention.behind",
            removed=pruned.reports,
            seconds=figures["seconds"],
            hint="older rows remain; the next hourly run goes on ('sensormeter prune' now)",
        )
    # The envelope's line has its own ``seconds`` (the whole job).
    figures["prune_seconds"] = figures.pop("seconds")
    return {"retention_days": settings.retention_days, "pruned": True, **figures}


def prune(
    database: peewee.Database,
    before: datetime,
    *,
    with_history: bool,
    budget_seconds: float | None = retention.RUN_SECONDS,
) -> retention.Pruned:
    """Remove the ledger rows older than ``before``, and, if asked, old history and quarantines."""
    pruned = retention.prune_reports(database, before, budget_seconds=budget_seconds)
    if with_history:
        pruned.history = retention.prune_history(database, before)
        pruned.quarantines = retention.prune_quarantines(database, before)
    return pruned


def remember(
    connection: redis.Redis, queue_name: str, days: int, now: datetime, pruned: retention.Pruned
) -> None:
    """Keep what this prune did in Redis, for ``sensormeter status``."""
    facts = {"at": now.isoformat() + "+00:00", "retention_days": days, **pruned.as_dict()}
    connection.set(retention_last_key(queue_name), json.dumps(facts))


def last_prune(connection: redis.Redis, queue_name: str) -> dict[str, Any] | None:
    """What the last prune did (as :func:`remember` kept it), or None before the first."""
    raw = connection.get(retention_last_key(queue_name))
    if raw is None:
        return None
    found: dict[str, Any] = json.loads(raw)
    return found

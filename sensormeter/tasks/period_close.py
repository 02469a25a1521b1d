"""Period close: the last value a `last` meter bills is the count at the end of the period.

The hourly report can be up to an hour old when a billing period ends. A scheduled check,
every minute, finds billable subscriptions whose period ends within the next
``SENSORMETER_PERIOD_CLOSE_MINUTES`` and queues one report per organization and period end
with the current count, stamped inside the period. Its identifier derives from the period
end, so the repeated checks of those minutes send it once.

A period that ended while the scheduler or the workers were down gets its close report once
they are back, stamped at the period's last second with the count as of then, as long as it
ended within the catch-up window (``SENSORMETER_CATCHUP_HOURS``, at least an hour). Each
check looks back to the start of the last check that completed (a time kept in Redis), so a
check costs one indexed query over a minute or two of period ends; without that time (first
start, Redis emptied) it looks back over the whole window.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import peewee
import redis
from rq import Queue

from .. import ledger
from ..keys import close_checked_key, close_queued_key
from ..logs import get_logger
from ..models import MeterReport, tuples, utcnow
from ..report import Report
from ..reporter import ChunkResult
from ..settings import Settings
from .envelope import JobRun, organization_fields, run_job
from .queue import enqueue_batch, job_options, make_queue
from .report import valid_ids

log = get_logger(__name__)

LOOK_BACK = timedelta(hours=1)  # the shortest window, when catch-up is off or shorter
# Worker dynos' clocks differ a little: look back a bit before the last check's start.
CLOCK_MARGIN = timedelta(minutes=5)
MAX_LEAD = timedelta(minutes=30)  # the largest SENSORMETER_PERIOD_CLOSE_MINUTES
_EXISTS_BATCH = 200  # SQLite allows 500 terms in one compound SELECT


def look_back(settings: Settings) -> timedelta:
    """How long after its end a period still gets its close report: the catch-up window."""
    return max(timedelta(hours=settings.catchup_hours), LOOK_BACK)


def report_period_close(organization_ids: list[str], period_end: str) -> dict[str, Any]:
    """RQ job: report the current count of organizations whose period ends at ``period_end``."""

    def body(run: JobRun) -> ChunkResult:
        report = Report.period_close(datetime.fromisoformat(period_end))
        reporter = run.runtime.reporter()
        result = reporter.run(
            run.runtime.database,
            organization_ids,
            report,
            job_id=run.job_id,
            final_attempt=run.final_attempt,
        )
        log.info(
            "period_close.reported",
            period_end=period_end,
            organizations=len(organization_ids),
            outcomes=result.as_dict()["counts"],
            job_id=run.job_id,
        )
        return result

    summary: dict[str, Any] = run_job(
        "report_period_close", body, period_end=period_end, **organization_fields(organization_ids)
    )
    return summary


def check_window(
    settings: Settings, connection: redis.Redis, now: datetime
) -> tuple[datetime, datetime]:
    """The (after, until] window of period ends this check looks at."""
    earliest = now - look_back(settings)
    raw: Any = connection.get(close_checked_key(settings.queue_name))
    try:
        previous = datetime.fromisoformat(raw.decode()) if raw is not None else None
    except (UnicodeDecodeError, ValueError):
        previous = None
    after = earliest if previous is None else max(earliest, min(previous, now) - CLOCK_MARGIN)
    return after, now + timedelta(minutes=settings.period_close_minutes)


def _ends(value: object) -> list[datetime]:
    """A source's answer for one organization: one end, or several (a renewal's start too)."""
    if isinstance(value, datetime):
        return [value]
    if isinstance(value, Iterable) and not isinstance(value, str | bytes):
        ends = list(value)
        if all(isinstance(end, datetime) for end in ends):
            return ends
    raise ValueError(f"periods_ending gave {value!r}, not a datetime or a list of datetimes")


def reported_before(pairs: Sequence[tuple[str, datetime]]) -> set[tuple[str, datetime]]:
    """The (organization, moment) pairs for which the ledger has a row measured before it.

    One query per 200 pairs; each EXISTS stops at the organization's first such row.
    """
    found: set[tuple[str, datetime]] = set()
    for start in range(0, len(pairs), _EXISTS_BATCH):
        batch = pairs[start : start + _EXISTS_BATCH]
        query: Any = None
        for i, (org, moment) in enumerate(batch):
            earlier = MeterReport.select(peewee.SQL("1")).where(
                (MeterReport.organization_id == org) & (MeterReport.measured_at < moment)
            )
            part = peewee.Select(columns=[peewee.Value(i)]).where(peewee.fn.EXISTS(earlier))
            query = part if query is None else query.union_all(part)
        # Models are bound per process (open_database); a bare SELECT runs on their database.
        rows = MeterReport._meta.database.execute(query).fetchall()
        found.update(batch[int(row[0])] for row in rows)
    return found


def _due(
    settings: Settings, found: Mapping[str, Any], now: datetime, connection: redis.Redis
) -> list[tuple[str, datetime]]:
    """The (organization, period end) pairs that still need a close report queued."""
    pairs: list[tuple[str, datetime]] = []
    # A host's source may hand back a malformed id or value: skip it (logged), keep the others.
    for org in valid_ids(list(found), None, connection, settings.queue_name):
        try:
            pairs.extend((org, end.replace(tzinfo=None)) for end in _ends(found[org]))
        except ValueError as exc:
            log.error("period_close.bad_period_end", organization_id=org, error=str(exc))
    identifiers = {
        pair: Report.period_close(pair[1]).identifier(pair[0], settings.meter_event_name)
        for pair in pairs
    }
    done: set[str] = set()
    ids = list(identifiers.values())
    for start in range(0, len(ids), 1000):
        done.update(ledger.find(ids[start : start + 1000]))
    todo = [pair for pair in pairs if identifiers[pair] not in done]
    # A period that is over is closed only for an organization sensormeter reported before
    # its end: a new subscription's start, or a first deployment, bills no history.
    past = [pair for pair in todo if pair[1] <= now]
    earlier = reported_before(past)
    skipped = [pair for pair in past if pair not in earlier]
    if skipped:
        # Debug: the same ends are found again by the checks of the next few minutes.
        log.debug("period_close.not_reported_before", organizations=len(skipped))
    return sorted(pair for pair in todo if pair[1] > now or pair in earlier)


def close_periods() -> dict[str, Any]:
    """RQ job (every minute): queue close reports for periods ending soon or missed."""
    result: dict[str, Any] = run_job(
        "close_periods", _close_periods, idle=lambda found: not found["jobs"]
    )
    return result


def _close_periods(run: JobRun) -> dict[str, Any]:
    runtime = run.runtime
    settings = runtime.settings
    if not settings.period_close_minutes:
        return {"organizations": 0, "jobs": 0}
    periods_ending = getattr(runtime.source, "periods_ending", None)
    if periods_ending is None:
        log.warning("period_close.unsupported", reason="the usage source has no periods_ending")
        return {"organizations": 0, "jobs": 0}
    now = utcnow()
    after, until = check_window(settings, runtime.redis, now)
    due = _due(settings, periods_ending(after, until), now, runtime.redis)
    # A queued close report has no ledger row until it runs: a marker per organization and
    # period end keeps later checks from queueing it again. It lasts as long as a check can
    # still find that end (workers may be down the whole time).
    marker_ttl = int((look_back(settings) + MAX_LEAD + LOOK_BACK).total_seconds())
    with runtime.redis.pipeline(transaction=False) as pipe:
        for org, end in due:
            pipe.set(close_queued_key(settings.queue_name, org, end), 1, nx=True, ex=marker_ttl)
        fresh = pipe.execute()
    by_end: dict[datetime, list[str]] = defaultdict(list)
    for (org, end), new in zip(due, fresh, strict=True):
        if new:
            by_end[end].append(org)
    queue = make_queue(settings, runtime.redis)
    jobs = []
    for end, orgs in by_end.items():
        for i in range(0, len(orgs), settings.chunk_size):
            chunk = orgs[i : i + settings.chunk_size]
            jobs.append(
                Queue.prepare_data(
                    report_period_close,
                    args=(chunk, end.isoformat()),
                    job_id=f"close-{end:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:12]}",
                    description=f"period close {end.isoformat()}, {len(chunk)} organizations",
                    **job_options(settings, "timeout"),
                )
            )
    enqueue_batch(queue, jobs)
    # Only now is everything up to ``now`` queued or done: the next check starts from here.
    runtime.redis.set(
        close_checked_key(settings.queue_name),
        now.isoformat(),
        ex=int(look_back(settings).total_seconds()),
    )
    organizations = sum(len(v) for v in by_end.values())
    if jobs:
        late = sum(len(orgs) for end, orgs in by_end.items() if end <= now)
        log.info(
            "period_close.queued",
            organizations=organizations,
            jobs=len(jobs),
            ended=late,
            window=f"{after:%Y-%m-%dT%H:%M:%S}..{until:%Y-%m-%dT%H:%M:%S}",
        )
    return {"organizations": organizations, "jobs": len(jobs)}


@dataclass(frozen=True)
class LateClose:
    """A close report that reached Stripe after the invoice was final, or has not reached it."""

    organization_id: str
    period_end: datetime
    value: int
    status: str
    sent_at: datetime | None


def period_end_of(
    organization_id: str, event_name: str, identifier: str, measured_at: datetime
) -> datetime:
    """The period end a close report stands for, found again from its identifier.

    A report counted after its end is stamped a second before it; one counted in the final
    minutes is stamped when counted, at most ``MAX_LEAD`` before. The identifier may be a
    digest (long ids), so it is matched rather than parsed.
    """
    first = measured_at.replace(microsecond=0) + timedelta(seconds=1)
    for step in range(int(MAX_LEAD.total_seconds()) + 1):
        end = first + timedelta(seconds=step)
        if Report.period_close(end).identifier(organization_id, event_name) == identifier:
            return end
    return first  # not found (a hand-made row): the earliest end it can stand for


def _seconds_after(database: peewee.Database, later: Any, earlier: Any) -> Any:
    """SQL for the seconds from ``earlier`` to ``later`` (two timestamp columns)."""
    if isinstance(database, peewee.PostgresqlDatabase):
        return peewee.fn.EXTRACT(peewee.NodeList((peewee.SQL("EPOCH FROM"), later - earlier)))
    return (peewee.fn.julianday(later) - peewee.fn.julianday(earlier)) * 86400


def late_closes(
    database: peewee.Database, grace_hours: int, now: datetime, days: int = 35
) -> list[LateClose]:
    """Close reports of the last ``days`` delivered after (period end + grace), or not yet.

    Stripe finalizes an invoice ``grace_hours`` after the period ends; a report that arrives
    later changes no bill. The query picks every row that may be late (its end is at least
    a second after its timestamp); the exact end then decides. Newest first.
    """
    grace = timedelta(hours=grace_hours)
    may_be_late = (
        (MeterReport.status == MeterReport.SENT)
        & (
            _seconds_after(database, MeterReport.sent_at, MeterReport.measured_at)
            > grace.total_seconds() + 1
        )
    ) | (
        (MeterReport.status != MeterReport.SENT)
        & (MeterReport.measured_at < now - grace - timedelta(seconds=1))
    )
    query = (
        MeterReport.select(
            MeterReport.organization_id,
            MeterReport.event_name,
            MeterReport.identifier,
            MeterReport.measured_at,
            MeterReport.value,
            MeterReport.status,
            MeterReport.sent_at,
        )
        .where(
            (MeterReport.kind == MeterReport.PERIOD_CLOSE)
            & (MeterReport.measured_at >= now - timedelta(days=days))
            & may_be_late
        )
        .order_by(MeterReport.measured_at.desc())
    )
    late = []
    for org, event_name, identifier, measured_at, value, status, sent_at in tuples(query):
        end = period_end_of(org, event_name, identifier, measured_at)
        delivered = sent_at if status == MeterReport.SENT else None
        if (delivered or now) > end + grace:
            late.append(LateClose(org, end, int(value), str(status), delivered))
    return late

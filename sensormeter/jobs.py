"""The RQ side: JSON jobs, the queue, the report job, the hourly fan-out and enqueueing."""

from __future__ import annotations

import math
import random
import resource
import time
import uuid
from typing import Any

import redis
import structlog
from rq import Queue, Retry, get_current_job
from rq.job import Job
from rq.serializers import JSONSerializer

from . import ledger
from .errors import InvalidOrganizationId, SensormeterError, ServiceUnavailable
from .logs import examples
from .models import utcnow
from .reporter import Reporter
from .runtime import get_runtime, make_redis
from .settings import Settings, redact_url
from .skipped import record_skipped
from .usage import iter_billable_chunks

log = structlog.get_logger("sensormeter.jobs")

# How long a queued on-demand report absorbs further calls for the same organization.
COALESCE_SECONDS = 3600
RESULT_TTL_SECONDS = 3600
ENQUEUE_BATCH = 100  # chunk jobs per Redis pipeline in the fan-out

# Delete the coalescing key only if it still names this job: a newer waiting job keeps its own.
_RELEASE = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
)


class JSONJob(Job):
    """An RQ job stored as JSON, never pickle; rq-scheduler creates its jobs through this class."""

    def __init__(self, id: str | None = None, connection: Any = None, serializer: Any = None):
        super().__init__(id=id, connection=connection, serializer=serializer or JSONSerializer)


def make_queue(settings: Settings, connection: redis.Redis) -> Queue:
    """The reporting queue, with JSON serialization."""
    return Queue(
        settings.queue_name, connection=connection, serializer=JSONSerializer, job_class=JSONJob
    )


def make_retry(settings: Settings, rng: random.Random | None = None) -> Retry | None:
    """RQ retry policy: ``max_retries`` attempts more, exponential backoff with "equal jitter".

    Each job gets its own waits: wait i is drawn uniformly between half and all of the
    exponential value ``B * 2**i``, then rounded up to whole seconds (RQ schedules retries by
    the second). Jobs that failed together (a 429 storm) so come back spread out instead of
    all at the same moment, and no wait exceeds the plain backoff, which recovery.stale_after
    and the docs count on. A backoff of 0 stays 0 (retry at once).
    """
    if settings.max_retries == 0:
        return None
    # The random module's own generator is reseeded in every forked work-horse.
    uniform = rng.uniform if rng is not None else random.uniform
    return Retry(
        max=settings.max_retries,
        interval=[math.ceil(uniform(s / 2, s)) for s in settings.retry_intervals()],
    )


def enqueue_batch(queue: Queue, batch: list[Any]) -> None:
    """Queue many prepared jobs (``Queue.prepare_data``) in one pipeline round trip."""
    if not batch:
        return
    with queue.connection.pipeline() as pipe:
        queue.enqueue_many(batch, pipeline=pipe)
        pipe.execute()


def waiting_key(settings: Settings, organization_id: str) -> str:
    """Redis key that marks an on-demand report as queued and not yet started."""
    return f"sensormeter:{settings.queue_name}:waiting:{organization_id}"


def _job_options(settings: Settings, timeout_key: str = "job_timeout") -> dict[str, Any]:
    # Queue.enqueue calls the timeout ``job_timeout``; Queue.prepare_data calls it ``timeout``.
    return {
        "retry": make_retry(settings),
        timeout_key: settings.job_timeout_seconds,
        "result_ttl": RESULT_TTL_SECONDS,
    }


def enqueue_sensor_report(
    organization_id: str,
    *,
    settings: Settings | None = None,
    connection: redis.Redis | None = None,
) -> str:
    """Queue a report of one organization's count now; returns the job id.

    A burst of calls while a report for the organization is still waiting returns that
    waiting report's job id instead of queueing another. The count is read when the job runs.

    Raises:
        InvalidOrganizationId: the id is empty or malformed (nothing is queued).
        ConfigurationError: a setting in the environment is invalid (when ``settings`` is None).
        ServiceUnavailable: Redis did not answer (nothing is queued).
    """
    org = ledger.validate_organization_id(organization_id)
    settings = settings if settings is not None else Settings.from_env()
    connection = connection if connection is not None else make_redis(settings.redis_url)
    request_id = uuid.uuid4().hex
    job_id = f"report-{request_id}"
    try:
        return _enqueue_report(settings, connection, org, request_id, job_id)
    except redis.RedisError as exc:
        raise ServiceUnavailable("Redis", redact_url(settings.redis_url), str(exc)) from None


def _enqueue_report(
    settings: Settings, connection: redis.Redis, org: str, request_id: str, job_id: str
) -> str:
    key = waiting_key(settings, org)
    if not connection.set(key, job_id, nx=True, ex=COALESCE_SECONDS):
        existing = connection.get(key)
        if existing is not None:
            return existing.decode() if isinstance(existing, bytes) else str(existing)
        # The waiting job started between SET and GET: fall through and queue a new one.
        connection.set(key, job_id, ex=COALESCE_SECONDS)
    try:
        make_queue(settings, connection).enqueue(
            process_meter_report,
            [org],
            request_id=request_id,
            job_id=job_id,
            description=f"sensor report for {org}",
            **_job_options(settings),
        )
    except Exception:
        connection.eval(_RELEASE, 1, key, job_id)
        raise
    return job_id


def process_meter_report(
    organization_ids: list[str], hour: str | None = None, request_id: str | None = None
) -> dict[str, Any]:
    """RQ job: count, record and send the reports of some organizations (safe to run twice).

    Args:
        organization_ids: the organizations of one chunk (or the one of an on-demand report).
        hour: ``YYYY-MM-DDTHH`` for the hourly report of that UTC hour.
        request_id: for an on-demand report, the id fixed when it was queued.
    """
    job = get_current_job()
    job_id = job.id if job is not None else None
    try:
        runtime = get_runtime()
    except BaseException as exc:
        log.error(
            "job.failed",
            job_id=job_id,
            organizations=len(organization_ids),
            examples=examples(organization_ids),
            error=str(exc),
        )
        raise
    settings = runtime.settings
    orgs = _valid_ids(organization_ids, job_id, runtime.redis, settings.queue_name)
    if request_id is not None and job_id is not None:
        for org in orgs:
            runtime.redis.eval(_RELEASE, 1, waiting_key(settings, org), job_id)
    # Retries are spent when RQ has none left (or the job runs outside RQ).
    final_attempt = job is None or not job.retries_left
    reporter = Reporter(runtime.source, runtime.meter, settings.meter_event_name)
    try:
        with runtime.database.connection_context():
            result = reporter.run(
                runtime.database,
                orgs,
                hour=hour,
                request_id=request_id,
                job_id=job_id,
                final_attempt=final_attempt,
            )
    except BaseException as exc:
        # BaseException too: RQ's ShutDownImminentException (a dyno restart) is one, and the
        # job line must still be written; RQ then retries the job.
        log.error(
            "job.failed",
            job_id=job_id,
            organizations=len(orgs),
            examples=examples(orgs),
            hour=hour,
            error=str(exc),
            error_type=type(exc).__name__,
            will_retry=not final_attempt,
        )
        raise
    outcome = "retrying" if result.retryable else "failed" if result.failed else "completed"
    summary = result.as_dict()
    # ru_maxrss is in KiB on Linux: the peak of this process (the work-horse) so far.
    summary["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    log_method = log.info if outcome == "completed" else log.warning
    # Counts and a few examples, not the chunk's lists: a line stays under 4,096 bytes
    # (docs/operations.md, log lines); each organization has its own "report" line.
    unsettled = result.retryable or result.failed
    log_method(
        f"job.{outcome}",
        job_id=job_id,
        organizations=len(orgs),
        examples=examples(orgs),
        hour=hour,
        total_value=sum(result.values.values()),
        outcomes=summary["counts"],
        skipped=len(result.skipped),
        skipped_examples=examples(result.skipped),
        unsettled_examples=examples(unsettled),
        error=result.errors.get(unsettled[0]) if unsettled else None,
        send_seconds=summary["send_seconds"],
        db_seconds=summary["db_seconds"],
        peak_rss_mb=summary["peak_rss_mb"],
    )
    result.raise_for_retry()
    return summary


def _valid_ids(
    organization_ids: list[str], job_id: str | None, connection: redis.Redis, queue_name: str
) -> list[str]:
    """The well-formed ids; a malformed one (from a host's source) is logged, not fatal.

    Each malformed id is also recorded in Redis with its reason, for ``sensormeter status``.
    """
    valid = []
    skipped: list[tuple[object, str]] = []
    for org in organization_ids:
        try:
            valid.append(ledger.validate_organization_id(org))
        except InvalidOrganizationId as exc:
            # Failing the job would fail every other organization of the chunk, every retry.
            log.error("report.skipped", organization_id=repr(org), reason=str(exc), job_id=job_id)
            skipped.append((org, ledger.organization_id_problem(org) or str(exc)))
    record_skipped(connection, queue_name, skipped)
    return valid


def report_all_sensor_counts(hour: str | None = None) -> dict[str, Any]:
    """RQ job (the hourly fan-out): queue one report job per chunk of billable organizations."""
    runtime = get_runtime()
    settings = runtime.settings
    label = hour if hour is not None else ledger.format_hour(ledger.hour_start(utcnow()))
    ledger.check_reportable_hour(label, utcnow())  # before queueing anything
    queue = make_queue(settings, runtime.redis)
    organizations = chunks = 0
    stamp = label.replace(":", "")
    batch: list[Any] = []

    def flush() -> None:
        enqueue_batch(queue, batch)
        batch.clear()

    db_seconds = 0.0
    chunks_iter = iter_billable_chunks(runtime.source, settings.chunk_size)
    with runtime.database.connection_context():
        while True:
            reading = time.perf_counter()
            chunk = next(chunks_iter, None)
            db_seconds += time.perf_counter() - reading
            if chunk is None:
                break
            batch.append(
                Queue.prepare_data(
                    process_meter_report,
                    args=(chunk,),
                    kwargs={"hour": label},
                    job_id=f"hourly-{stamp}-{chunks}-{uuid.uuid4().hex[:8]}",
                    description=f"hourly report {label}, {len(chunk)} organizations",
                    **_job_options(settings, "timeout"),
                )
            )
            organizations += len(chunk)
            chunks += 1
            if len(batch) >= ENQUEUE_BATCH:
                flush()
    if batch:
        flush()
    db_seconds = round(db_seconds, 4)
    catchup_job = None
    if hour is None:
        # Every hourly tick also looks back for hours left without a delivered report.
        from .catchup import enqueue_catch_up

        catchup_job = enqueue_catch_up(settings, runtime.redis, include_current=False)
    log.info(
        "fanout.completed",
        hour=label,
        organizations=organizations,
        chunks=chunks,
        db_seconds=db_seconds,
        catchup_job=catchup_job,
    )
    return {
        "hour": label,
        "organizations": organizations,
        "chunks": chunks,
        "db_seconds": db_seconds,
    }


def enqueue_fanout(settings: Settings, connection: redis.Redis, hour: str | None = None) -> str:
    """Queue the hourly fan-out now (what ``sensormeter report-all`` does); returns the job id."""
    if hour is not None:
        ledger.check_reportable_hour(hour, utcnow())
    job = make_queue(settings, connection).enqueue(
        report_all_sensor_counts,
        hour=hour,
        job_id=f"fanout-{uuid.uuid4().hex}",
        description="report all sensor counts",
        **_job_options(settings),
    )
    return str(job.id)


__all__ = [
    "JSONJob",
    "SensormeterError",
    "enqueue_fanout",
    "enqueue_sensor_report",
    "make_queue",
    "process_meter_report",
    "report_all_sensor_counts",
]

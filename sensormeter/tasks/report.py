"""Reporting now: ``enqueue_sensor_report`` (the host's call) and the report job."""

from __future__ import annotations

import resource
import uuid
from typing import Any

import redis
import structlog
from rq import get_current_job

from .. import ledger
from ..defaults import COALESCE_SECONDS
from ..errors import InvalidOrganizationId, ServiceUnavailable
from ..keys import waiting_key
from ..logs import examples
from ..reporter import Reporter
from ..runtime import get_runtime, make_redis
from ..settings import Settings, redact_url
from .queue import job_options, make_queue
from .skipped import record_skipped

log = structlog.get_logger("sensormeter.jobs")

# Delete the coalescing key only if it still names this job: a newer waiting job keeps its own.
_RELEASE = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
)


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
    key = waiting_key(settings.queue_name, org)
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
            **job_options(settings),
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
    orgs = valid_ids(organization_ids, job_id, runtime.redis, settings.queue_name)
    if request_id is not None and job_id is not None:
        for org in orgs:
            runtime.redis.eval(_RELEASE, 1, waiting_key(settings.queue_name, org), job_id)
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


def valid_ids(
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

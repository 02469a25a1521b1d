"""Reporting now: ``enqueue_sensor_report`` (the host's call) and the report job."""

from __future__ import annotations

import uuid
from typing import Any

import redis

from .. import ledger
from ..defaults import COALESCE_SECONDS
from ..errors import InvalidOrganizationId, ServiceUnavailable
from ..keys import waiting_key
from ..logs import get_logger
from ..report import Report
from ..reporter import ChunkResult
from ..runtime import make_redis
from ..settings import Settings, redact_url
from .envelope import JobRun, organization_fields, run_job
from .queue import job_options, make_queue
from .skipped import record_skipped

log = get_logger(__name__)

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

    def body(run: JobRun) -> ChunkResult:
        report = Report.from_job(hour, request_id)
        settings = run.runtime.settings
        orgs = valid_ids(organization_ids, run.job_id, run.runtime.redis, settings.queue_name)
        if request_id is not None and run.job_id is not None:
            for org in orgs:
                run.runtime.redis.eval(
                    _RELEASE, 1, waiting_key(settings.queue_name, org), run.job_id
                )
        reporter = run.runtime.reporter()
        return reporter.run(
            run.runtime.database,
            orgs,
            report,
            job_id=run.job_id,
            final_attempt=run.final_attempt,
        )

    summary: dict[str, Any] = run_job(
        "process_meter_report", body, hour=hour, **organization_fields(organization_ids)
    )
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

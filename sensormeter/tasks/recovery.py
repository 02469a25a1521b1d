"""Sending again what was left behind: failed rows, and pending rows whose job was lost.

A pending row normally belongs to a job that is running or waiting for its retry. When that
job is gone (Redis lost its data, a worker was killed after its last retry), the row would
stay pending forever; :func:`sweep_stale_reports` finds such rows and resends them with the
identifier and value they already have, which Stripe deduplicates if they had landed.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import redis
from rq import Queue

from .. import ledger
from ..defaults import STALE_MARGIN_SECONDS
from ..logs import get_logger
from ..models import utcnow
from ..reporter import ChunkResult
from ..settings import Settings
from .envelope import JobRun, run_job
from .queue import enqueue_batch, job_options, make_queue

log = get_logger(__name__)


def stale_after(settings: Settings) -> timedelta:
    """How long a pending row may go untouched before it counts as abandoned."""
    live = settings.job_timeout_seconds * (settings.max_retries + 1) + sum(
        settings.retry_intervals()
    )
    return timedelta(seconds=live + STALE_MARGIN_SECONDS)


def resend_reports(report_ids: list[int]) -> dict[str, Any]:
    """RQ job: send the given ledger rows again (same identifier and value); safe to rerun."""

    def body(run: JobRun) -> ChunkResult:
        reporter = run.runtime.reporter()
        result = reporter.resend(
            run.runtime.database, report_ids, job_id=run.job_id, final_attempt=run.final_attempt
        )
        outcomes = result.as_dict()["counts"]
        log.info("resend.completed", job_id=run.job_id, reports=len(report_ids), outcomes=outcomes)
        return result

    summary: dict[str, Any] = run_job("resend_reports", body, reports=len(report_ids))
    return summary


def enqueue_resend(settings: Settings, connection: redis.Redis, report_ids: list[int]) -> int:
    """Queue resend jobs for the rows, ``chunk_size`` rows per job; returns the job count."""
    queue = make_queue(settings, connection)
    chunks = [
        report_ids[i : i + settings.chunk_size]
        for i in range(0, len(report_ids), settings.chunk_size)
    ]
    enqueue_batch(
        queue,
        [
            Queue.prepare_data(
                resend_reports,
                args=(chunk,),
                description=f"resend {len(chunk)} ledger rows",
                **job_options(settings, "timeout"),
            )
            for chunk in chunks
        ],
    )
    return len(chunks)


def sweep_stale_reports() -> dict[str, Any]:
    """RQ job (scheduled): resend pending rows that no job will finish."""
    result: dict[str, Any] = run_job(
        "sweep_stale_reports", _sweep, idle=lambda found: not found["jobs"]
    )
    return result


def _sweep(run: JobRun) -> dict[str, Any]:
    runtime = run.runtime
    settings = runtime.settings
    ids = ledger.ids_to_resend(failed=False, stale_before=utcnow() - stale_after(settings))
    jobs = enqueue_resend(settings, runtime.redis, ids)
    if ids:
        log.warning("sweep.found_stale_pending", reports=len(ids), jobs=jobs)
    return {"stale_pending": len(ids), "jobs": jobs}

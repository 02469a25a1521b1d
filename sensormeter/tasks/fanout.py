"""The hourly fan-out: one report job per chunk of billable organizations, then a catch-up."""

from __future__ import annotations

import time
import uuid
from typing import Any

import redis
from rq import Queue

from ..defaults import ENQUEUE_BATCH
from ..hours import check_reportable_hour, format_hour, hour_start
from ..logs import get_logger
from ..models import utcnow
from ..settings import Settings
from ..usage import iter_billable_chunks
from .catchup import enqueue_catch_up
from .envelope import JobRun, run_job
from .queue import enqueue_batch, job_options, make_queue
from .report import process_meter_report
from .unbilled import enqueue_unbilled_survey

log = get_logger(__name__)


def report_all_sensor_counts(hour: str | None = None) -> dict[str, Any]:
    """RQ job (the hourly fan-out): queue one report job per chunk of billable organizations."""
    result: dict[str, Any] = run_job("report_all_sensor_counts", lambda run: _fan_out(run, hour))
    return result


def _fan_out(run: JobRun, hour: str | None) -> dict[str, Any]:
    runtime = run.runtime
    settings = runtime.settings
    label = hour if hour is not None else format_hour(hour_start(utcnow()))
    check_reportable_hour(label, utcnow())  # before queueing anything
    queue = make_queue(settings, runtime.redis)
    organizations = chunks = 0
    stamp = label.replace(":", "")
    batch: list[Any] = []
    db_seconds = 0.0
    chunks_iter = iter_billable_chunks(runtime.source, settings.chunk_size)
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
                **job_options(settings, "timeout"),
            )
        )
        organizations += len(chunk)
        chunks += 1
        if len(batch) >= ENQUEUE_BATCH:
            enqueue_batch(queue, batch)
            batch.clear()
    enqueue_batch(queue, batch)
    db_seconds = round(db_seconds, 4)
    catchup_job = None
    if hour is None:
        # Every hourly tick also looks back for hours left without a delivered report.
        catchup_job = enqueue_catch_up(settings, runtime.redis, include_current=False)
        # ... and counts the active sensors nobody is billed for (the unbilled metrics).
        enqueue_unbilled_survey(settings, runtime.redis)
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
        check_reportable_hour(hour, utcnow())
    job = make_queue(settings, connection).enqueue(
        report_all_sensor_counts,
        hour=hour,
        job_id=f"fanout-{uuid.uuid4().hex}",
        description="report all sensor counts",
        **job_options(settings),
    )
    return str(job.id)

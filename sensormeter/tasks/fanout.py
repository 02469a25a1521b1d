"""The hourly fan-out: one report job per chunk of billable organizations, then a catch-up.

The fan-out of the current hour also records each chunk in the billable history.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import redis
from rq import Queue

from ..defaults import ENQUEUE_BATCH, FANOUT_TIMEOUT_SECONDS
from ..hours import check_reportable_hour, format_hour, hour_start, parse_hour
from ..ledger import history
from ..logs import get_logger
from ..models import utcnow
from ..runtime import Runtime
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
    now = utcnow()
    label = hour if hour is not None else format_hour(hour_start(now))
    # Only the current hour is recorded in the billable history: who is billable now says
    # nothing of who was at a past hour, so a past hour's report-all must not rewrite it.
    current = check_reportable_hour(label, now) == hour_start(now)  # before queueing
    recording = current
    queue = make_queue(settings, runtime.redis)
    organizations = chunks = 0
    stamp = label.replace(":", "")
    batch: list[Any] = []
    db_seconds = history_seconds = 0.0
    chunks_iter = iter_billable_chunks(runtime.source, settings.chunk_size)
    while True:
        reading = time.perf_counter()
        chunk = next(chunks_iter, None)
        db_seconds += time.perf_counter() - reading
        if chunk is None:
            break
        if recording:
            reading = time.perf_counter()
            recording = _record(runtime, chunk, label)
            history_seconds += time.perf_counter() - reading
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
    if recording:
        # Every chunk is recorded: the hour counts as one the fleet was recorded at (an
        # organization missing from it was not billable then; see ledger/history.py).
        try:
            history.mark_run(runtime.database, parse_hour(label))
        except Exception:  # noqa: BLE001 (the chunk jobs are queued: a retry would double them)
            log.exception("history.record_failed", hour=label, organizations=0)
    db_seconds = round(db_seconds, 4)
    history_seconds = round(history_seconds, 4)
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
        history_seconds=history_seconds if current else None,
        catchup_job=catchup_job,
    )
    return {
        "hour": label,
        "organizations": organizations,
        "chunks": chunks,
        "db_seconds": db_seconds,
        "history_seconds": history_seconds if current else None,
    }


def _record(runtime: Runtime, chunk: list[str], label: str) -> bool:
    """Record the chunk's billable organizations and their customers at the hour.

    Returns False when that failed: the reports matter more than their history, so the
    fan-out goes on queueing them, records no more chunks and does not mark the hour
    (the next complete run bridges it; see ledger/history.py).
    """
    try:
        customers = runtime.source.billable_customers(chunk)
        history.record(
            runtime.database,
            customers,
            parse_hour(label),
            bridge_hours=runtime.settings.catchup_hours,
        )
    except Exception:  # noqa: BLE001 (logged with its traceback; the hour stays unmarked)
        log.exception("history.record_failed", hour=label, organizations=len(chunk))
        return False
    return True


def enqueue_fanout(settings: Settings, connection: redis.Redis, hour: str | None = None) -> str:
    """Queue the hourly fan-out now (what ``sensormeter report-all`` does); returns the job id."""
    if hour is not None:
        check_reportable_hour(hour, utcnow())
    options = job_options(settings)
    # One job pages and records the whole fleet (see FANOUT_TIMEOUT_SECONDS).
    options["job_timeout"] = max(settings.job_timeout_seconds, FANOUT_TIMEOUT_SECONDS)
    job = make_queue(settings, connection).enqueue(
        report_all_sensor_counts,
        hour=hour,
        job_id=f"fanout-{uuid.uuid4().hex}",
        description="report all sensor counts",
        **options,
    )
    return str(job.id)

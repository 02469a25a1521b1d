"""The one envelope every RQ job of sensormeter runs in (as dramatiq's middleware wraps actors).

It gives the job body what it needs (the process runtime, the RQ job id, whether this is the
last attempt), opens the database connection, writes the same ``job.started`` and
``job.completed`` / ``job.retrying`` / ``job.failed`` lines for every job, and makes the retry
decision: a chunk whose reports met a transient failure raises so RQ retries it. A body holds
only its own work.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from rq import get_current_job

from ..logs import examples, get_logger
from ..reporter import ChunkResult
from ..runtime import Runtime, get_runtime

log = get_logger(__name__)


@dataclass(frozen=True)
class JobRun:
    """What a job body gets: the process runtime, its RQ job id, and if it is the last try."""

    runtime: Runtime
    job_id: str | None
    final_attempt: bool


def organization_fields(organization_ids: Iterable[str]) -> dict[str, Any]:
    """The log fields naming a job's organizations: a count and a few examples."""
    orgs = list(organization_ids)
    return {"organizations": len(orgs), "examples": examples(orgs)}


def _peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux: the peak of this process (the work-horse) so far.
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def chunk_fields(result: ChunkResult) -> dict[str, Any]:
    """The fields of a chunk job's closing line: counts and examples, never whole lists.

    A line stays under 4,096 bytes (docs/operations.md); each organization has its own
    ``report`` line.
    """
    summary = result.as_dict()
    unsettled = result.retryable or result.failed
    return {
        "total_value": sum(result.values.values()),
        "outcomes": summary["counts"],
        "skipped": len(result.skipped),
        "skipped_examples": examples(result.skipped),
        "unsettled_examples": examples(unsettled),
        "error": result.errors.get(unsettled[0]) if unsettled else None,
        "send_seconds": summary["send_seconds"],
        "db_seconds": summary["db_seconds"],
    }


def run_job(
    name: str,
    body: Callable[[JobRun], Any],
    idle: Callable[[dict[str, Any]], bool] | None = None,
    **fields: Any,
) -> Any:
    """Run one job body in the envelope; returns what RQ stores as the job's result.

    ``fields`` are added to every line of the job. A body returns a :class:`ChunkResult`
    (report jobs: its outcomes decide ``completed``/``retrying``/``failed`` and the retry) or
    a JSON-friendly dict of its own figures (scheduling jobs: logged and returned as is).

    ``idle`` marks a routine check (every minute, every 10 minutes): its ``job.started`` line
    is a debug line, and so is its ``job.completed`` when ``idle(result)`` says it found
    nothing to do, so that a quiet minute writes nothing at info level.
    """
    job = get_current_job()
    job_id = job.id if job is not None else None
    # Retries are spent when RQ has none left (or the job runs outside RQ).
    final_attempt = job is None or not job.retries_left
    started = time.perf_counter()
    started_line = log.info if idle is None else log.debug
    started_line("job.started", job=name, job_id=job_id, final_attempt=final_attempt, **fields)
    try:
        runtime = get_runtime()
        with runtime.database.connection_context():
            outcome = body(JobRun(runtime, job_id, final_attempt))
    except BaseException as exc:
        # BaseException too: RQ's ShutDownImminentException (a dyno restart) is one, and the
        # job line must still be written; RQ then retries the job.
        log.error(
            "job.failed",
            job=name,
            job_id=job_id,
            error=str(exc),
            error_type=type(exc).__name__,
            will_retry=not final_attempt,
            **fields,
        )
        raise
    seconds = round(time.perf_counter() - started, 4)
    if not isinstance(outcome, ChunkResult):
        done_line = log.debug if idle is not None and idle(outcome) else log.info
        done_line("job.completed", job=name, job_id=job_id, seconds=seconds, **fields, **outcome)
        return outcome
    state = "retrying" if outcome.retryable else "failed" if outcome.failed else "completed"
    summary = outcome.as_dict()
    summary["peak_rss_mb"] = _peak_rss_mb()
    line = log.info if state == "completed" else log.warning
    line(
        f"job.{state}",
        job=name,
        job_id=job_id,
        seconds=seconds,
        peak_rss_mb=summary["peak_rss_mb"],
        **fields,
        **chunk_fields(outcome),
    )
    outcome.raise_for_retry()
    return summary

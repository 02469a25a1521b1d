"""The unbilled-usage survey: an hourly job that keeps the totals by reason for the metrics.

Counting every active sensor of the fleet is one GROUP BY over ``sensors`` (seconds at
10,000,000 sensors): too much for every scrape, so the hourly fan-out queues this job and
``sensormeter_unbilled_sensors`` reads what it stored in Redis (docs/operations.md).
"""

from __future__ import annotations

import uuid
from typing import Any

import redis

from ..logs import get_logger
from ..settings import Settings
from ..usage.source import supports_unbilled
from ..usage.unbilled import store_totals, survey
from .envelope import JobRun, run_job
from .queue import job_options, make_queue

log = get_logger(__name__)


def survey_unbilled() -> dict[str, Any]:
    """RQ job: count the unbilled organizations and sensors by reason; keep them in Redis."""
    result: dict[str, Any] = run_job("survey_unbilled", _survey)
    return result


def _survey(run: JobRun) -> dict[str, Any]:
    runtime = run.runtime
    if not supports_unbilled(runtime.source):
        # A host source without unbilled_usage(): the metric stays absent (documented).
        return {"supported": False}
    found = survey(runtime.source)
    store_totals(runtime.redis, runtime.settings.queue_name, found)
    organizations, sensors = sum(found.organizations.values()), sum(found.sensors.values())
    if sensors:
        log.warning(
            "unbilled.found",
            organizations=organizations,
            sensors=sensors,
            by_reason=found.sensors,
        )
    return {"supported": True, "organizations": organizations, "sensors": sensors}


def enqueue_unbilled_survey(settings: Settings, connection: redis.Redis) -> str:
    """Queue the survey (the hourly fan-out does); returns the job id."""
    job = make_queue(settings, connection).enqueue(
        survey_unbilled,
        job_id=f"unbilled-{uuid.uuid4().hex}",
        description="count the active sensors that are not billed",
        **job_options(settings),
    )
    return str(job.id)

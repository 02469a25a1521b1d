"""The reporting queue: JSON jobs, retry policy, shared job options, pipelined enqueueing."""

from __future__ import annotations

import math
import random
from typing import Any

import redis
from rq import Queue, Retry
from rq.job import Job
from rq.serializers import JSONSerializer

from ..defaults import ENQUEUE_BATCH, RESULT_TTL_SECONDS
from ..settings import Settings


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
    """Queue prepared jobs (``Queue.prepare_data``), one pipeline round trip per 200."""
    for start in range(0, len(batch), ENQUEUE_BATCH):
        with queue.connection.pipeline() as pipe:
            queue.enqueue_many(batch[start : start + ENQUEUE_BATCH], pipeline=pipe)
            pipe.execute()


def job_options(settings: Settings, timeout_key: str = "job_timeout") -> dict[str, Any]:
    """The options every report job is queued with: retries, timeout, result TTL."""
    # Queue.enqueue calls the timeout ``job_timeout``; Queue.prepare_data calls it ``timeout``.
    return {
        "retry": make_retry(settings),
        timeout_key: settings.job_timeout_seconds,
        "result_ttl": RESULT_TTL_SECONDS,
    }

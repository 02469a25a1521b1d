"""Jittered RQ retries: each job waits its own time, around the exponential backoff."""

from __future__ import annotations

import math
import random

import redis

from sensormeter.settings import Settings
from sensormeter.tasks.queue import make_queue, make_retry
from sensormeter.tasks.report import enqueue_sensor_report

from .conftest import REDIS_URL, TEST_QUEUE


def test_each_wait_is_between_half_and_all_of_its_backoff() -> None:
    """Wait i is drawn in [B*2**i / 2, B*2**i], rounded up to whole seconds."""
    settings = Settings(max_retries=5, retry_backoff_seconds=10)
    rng = random.Random(7)
    for _ in range(200):
        retry = make_retry(settings, rng)
        assert retry is not None and retry.max == 5
        for wait, backoff in zip(retry.intervals, settings.retry_intervals(), strict=True):
            assert math.ceil(backoff / 2) <= wait <= backoff


def test_jobs_get_different_waits() -> None:
    """Two jobs retried together do not come back at the same moments."""
    settings = Settings(max_retries=5, retry_backoff_seconds=10)
    rng = random.Random(11)
    lists = {tuple(r.intervals) for r in (make_retry(settings, rng) for _ in range(20)) if r}
    assert len(lists) > 10


def test_zero_backoff_stays_zero() -> None:
    """A backoff of 0 means retry at once, jitter or not."""
    retry = make_retry(Settings(max_retries=3, retry_backoff_seconds=0))
    assert retry is not None and retry.intervals == [0, 0, 0]
    assert make_retry(Settings(max_retries=0)) is None


def test_queued_jobs_carry_their_own_waits(redis_conn: redis.Redis) -> None:
    """Jobs queued one after another each store their own list of waits in Redis."""
    settings = Settings(
        redis_url=REDIS_URL, queue_name=TEST_QUEUE, max_retries=5, retry_backoff_seconds=10
    )
    ids = [
        enqueue_sensor_report(f"org{i}", settings=settings, connection=redis_conn)
        for i in range(8)
    ]
    queue = make_queue(settings, redis_conn)
    waits = {tuple(queue.fetch_job(job_id).retry_intervals) for job_id in ids}
    assert len(waits) > 1

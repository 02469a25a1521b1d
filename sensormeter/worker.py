"""Running RQ workers for the reporting queue: a pool of Heroku-safe workers, and burst mode."""

from __future__ import annotations

import time

import redis
import structlog
from rq import Queue
from rq.registry import ScheduledJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer
from rq.worker import HerokuWorker
from rq.worker_pool import WorkerPool

from .jobs import JSONJob, make_queue
from .settings import Settings

log = structlog.get_logger("sensormeter.worker")


def pending_work(queue: Queue) -> tuple[int, int]:
    """(jobs queued now, jobs waiting in the scheduled registry for a retry)."""
    scheduled = ScheduledJobRegistry(queue=queue).count
    return queue.count, scheduled


def enqueue_due_retries(queue: Queue) -> int:
    """Move retries whose time has come from the scheduled registry to the queue."""
    registry = ScheduledJobRegistry(queue=queue)
    job_ids = registry.get_jobs_to_schedule(int(time.time()))
    if not job_ids:
        return 0
    jobs = JSONJob.fetch_many(job_ids, connection=queue.connection, serializer=JSONSerializer)
    with queue.connection.pipeline() as pipe:
        for job in jobs:
            if job is not None:
                queue.enqueue_job(job, pipeline=pipe)
        for job_id in job_ids:
            registry.remove(job_id, pipeline=pipe)
        pipe.execute()
    return len(job_ids)


def run_pool(settings: Settings, connection: redis.Redis, workers: int, burst: bool) -> None:
    """Run ``workers`` HerokuWorkers in one pool until SIGTERM (or, in burst, until idle)."""
    pool = WorkerPool(
        [settings.queue_name],
        connection=connection,
        num_workers=workers,
        # HerokuWorker lets a job finish for 6 s after SIGTERM, then fails it so RQ retries it.
        worker_class=HerokuWorker,
        serializer=JSONSerializer,
        job_class=JSONJob,
    )
    pool.start(burst=burst)


def run_workers(settings: Settings, connection: redis.Redis, workers: int, burst: bool) -> None:
    """Run the pool; with ``burst``, return only when nothing is queued or waiting for a retry."""
    if not burst:
        run_pool(settings, connection, workers, burst=False)
        return
    queue = make_queue(settings, connection)
    while True:
        if queue.count:
            run_pool(settings, connection, workers, burst=True)
        queued, scheduled = pending_work(queue)
        if not queued and not scheduled:
            break
        if not queued:
            # Retries wait in the scheduled registry; move the due ones ourselves.
            time.sleep(0.2)
            enqueue_due_retries(queue)
    started = StartedJobRegistry(queue=queue).count
    log.info("worker.burst_done", queue=settings.queue_name, still_running_elsewhere=started)

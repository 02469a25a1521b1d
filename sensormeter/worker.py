"""Running RQ workers for the reporting queue: a pool of Heroku-safe workers, and burst mode."""

from __future__ import annotations

import multiprocessing
import os
import signal
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


def _burst_worker(settings: Settings, index: int) -> None:
    """One burst worker process: work until nothing is queued, running or waiting to retry."""
    from .runtime import make_redis

    connection = make_redis(settings.redis_url)
    queue = make_queue(settings, connection)
    worker = HerokuWorker(
        [queue], connection=connection, serializer=JSONSerializer, job_class=JSONJob
    )
    while True:
        worker.work(burst=True, with_scheduler=False)
        if worker._stop_requested:  # SIGTERM/SIGINT: stop, do not take more work
            return
        queued, scheduled = pending_work(queue)
        running = StartedJobRegistry(queue=queue).count
        if not queued and not scheduled and not running:
            return
        if index == 0:
            # Retries wait in the scheduled registry; one process moves the due ones.
            enqueue_due_retries(queue)
        time.sleep(0.2)


def run_workers(settings: Settings, connection: redis.Redis, workers: int, burst: bool) -> None:
    """Run the pool; with ``burst``, return only when nothing is queued or waiting for a retry.

    RQ's own burst mode stops a worker as soon as the queue is empty, so four of five workers
    would quit while the fan-out job is still queueing chunks. Here each burst worker goes on
    while any job is queued, running or waiting for its retry.
    """
    if not burst:
        run_pool(settings, connection, workers, burst=False)
        return
    context = multiprocessing.get_context("fork")
    processes = [
        context.Process(target=_burst_worker, args=(settings, i), name=f"sensormeter-burst-{i}")
        for i in range(workers)
    ]
    for process in processes:
        process.start()

    def forward(signum: int, _frame: object) -> None:
        # The children are HerokuWorkers: SIGTERM lets a running job finish or be retried.
        for process in processes:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for process in processes:
            process.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    failed = [p.name for p in processes if p.exitcode != 0]
    log.info("worker.burst_done", queue=settings.queue_name, failed_processes=failed)

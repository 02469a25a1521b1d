"""Running RQ workers for the reporting queue: a pool of Heroku-safe workers, and burst mode."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time
from typing import Any, cast

import redis
from rq import Queue
from rq.exceptions import ShutDownImminentException
from rq.job import Job
from rq.registry import ScheduledJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer
from rq.worker import HerokuWorker, WorkerStatus
from rq.worker_pool import WorkerPool

from ..errors import ReportsFailed, RetryableReportError
from ..keys import burst_lock_key
from ..logs import BURST_ROUNDS, QuietChatter, get_logger, scrub
from ..runtime import make_redis
from ..settings import Settings
from .queue import JSONJob, make_queue

log = get_logger(__name__)

# A report job raises these after its own job.retrying / job.failed warning has said what
# happened and why: the outcome of Stripe's answers, not a fault in the code.
# A job cut off at shutdown is retried too; its job.failed line says so (will_retry).
EXPECTED_FAILURES = (RetryableReportError, ReportsFailed, ShutDownImminentException)


class _AtDebug(logging.LoggerAdapter):  # type: ignore[type-arg]
    """rq's logger with every line moved to the debug level."""

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        """Log at debug whatever the level asked for."""
        self.logger.log(logging.DEBUG, msg, *args, **kwargs)


class ReportingWorker(HerokuWorker):
    """A HerokuWorker that, told to stop between two jobs, stops instead of waiting for work.

    rq marks a worker idle only when its next dequeue starts. A SIGTERM that lands between
    the end of a job and that moment finds it "busy", so rq merely notes the request and then
    blocks in BLMOVE for up to its dequeue timeout (minutes), past Heroku's 30 s grace.

    Both workarounds of rq here (this one and the listener thread's signal mask in
    :meth:`subscribe`) use only rq's public methods; tests/test_shutdown.py and
    tests/test_rq_contract.py fail if rq changes under them.
    """

    # Set by every warm stop request (SIGTERM, SIGINT, rq's shutdown command), busy or idle.
    # rq's own flag for it is private and set only when the request finds the worker busy.
    stop_signalled: bool = False

    def handle_warm_shutdown_request(self) -> None:
        """Note the stop request, then let HerokuWorker pass it on to a running work horse."""
        self.stop_signalled = True
        super().handle_warm_shutdown_request()  # type: ignore[no-untyped-call]

    def subscribe(self) -> None:
        """Start rq's command listener thread with the stop signals blocked in it.

        A signal sent to the process goes to any thread that does not block it. When the
        listener thread took SIGTERM, the main thread, blocked in BLMOVE or waiting for its
        work horse, did not run the handler until that call returned: the worker outlived
        Heroku's 30 s, or let a job run on that it should have cut off. A new thread inherits
        the creating thread's signal mask, so block them around the thread's start.
        """
        blocked = {signal.SIGTERM, signal.SIGINT, signal.SIGALRM, signal.SIGRTMIN}
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        try:
            super().subscribe()  # type: ignore[no-untyped-call]
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    def handle_exception(self, job: Job, *exc_info: Any) -> None:
        """Let rq log and handle a job's exception; an expected one's traceback only at debug.

        rq logs every exception a job raises at error level with its traceback (about 1 KB).
        For a report job that will be retried, or whose retries are spent, the job's own
        warning line is the one line that says so; unexpected errors keep their traceback.
        """
        if not isinstance(exc_info[1], EXPECTED_FAILURES):
            super().handle_exception(job, *exc_info)
            return
        # rq's exception handlers (Sentry's, say) still run: only its log line changes. The
        # work horse that runs this is one thread, so the swap is seen by nothing else.
        own = self.log
        self.log = cast(logging.Logger, _AtDebug(own, {}))
        try:
            super().handle_exception(job, *exc_info)
        finally:
            self.log = own

    def handle_job_failure(
        self,
        job: Job,
        queue: Queue,
        started_job_registry: StartedJobRegistry | None = None,
        exc_string: str = "",
    ) -> None:
        """Record a failed attempt as rq does, with secrets scrubbed from the exception text.

        A worker records every failure here: a job's exception with its traceback, a killed
        work-horse, a job stuck in the intermediate queue. rq stores that text as is in the
        failed job's data and in its result (``rq:results:<job>``), and sends it to the
        job's webhooks. Exceptions from outside (Stripe, Redis, the database driver) may quote a key
        or a URL with its password, so the text is scrubbed like a log line first.
        """
        super().handle_job_failure(
            job, queue, started_job_registry=started_job_registry, exc_string=scrub(exc_string)
        )

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> Any:
        """Mark the worker idle first, so a stop request is either seen here or raised at once."""
        # From here on rq's signal handler finds the worker idle and raises StopRequested at
        # once; a request that came while it was still "busy" is in stop_signalled.
        self.set_state(WorkerStatus.IDLE)
        if self.stop_signalled:
            return None
        return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)


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


def preload() -> None:
    """Import in the worker what each job's forked work-horse would otherwise import again.

    RQ forks a work-horse per job, so a module first imported there is imported again for
    every job: stripe-python imports its client lazily, about 45 ms of CPU a job, a fifth of
    a 500-organization chunk's (docs/performance.md, "Where a report's CPU goes").
    """
    import stripe

    stripe.StripeClient  # noqa: B018 (the attribute access is the import)


def worker_class(settings: Settings) -> type[ReportingWorker]:
    """ReportingWorker with the shutdown grace of the settings (rq's HerokuWorker has 6 s)."""
    # rq reads the grace from the class; the pool builds its workers from a class, not objects.
    return type(
        "ReportingWorker",
        (ReportingWorker,),
        {"imminent_shutdown_delay": settings.shutdown_grace_seconds, "__module__": __name__},
    )


def run_pool(settings: Settings, connection: redis.Redis, workers: int, burst: bool) -> None:
    """Run ``workers`` HerokuWorkers in one pool until SIGTERM (or, in burst, until idle)."""
    preload()
    pool = WorkerPool(
        [settings.queue_name],
        connection=connection,
        num_workers=workers,
        # After SIGTERM a running job has the grace to finish; then it fails and RQ retries it.
        worker_class=worker_class(settings),
        serializer=JSONSerializer,
        job_class=JSONJob,
    )
    pool.start(burst=burst, logging_level=settings.log_level)


def _burst_worker(settings: Settings, index: int) -> None:
    """One burst worker process: work until nothing is queued, running or waiting to retry."""
    connection = make_redis(settings.redis_url)
    queue = make_queue(settings, connection)
    # Each round below starts and stops an rq worker: its start and stop lines would come
    # every quarter second while retries wait; worker.burst_done says when all is done.
    logging.getLogger("rq.worker").addFilter(
        QuietChatter(logging.getLevelNamesMapping()[settings.log_level], BURST_ROUNDS)
    )
    worker = worker_class(settings)(
        [queue], connection=connection, serializer=JSONSerializer, job_class=JSONJob
    )
    idle_checks = 0
    while True:
        worker.work(burst=True, with_scheduler=False, logging_level=settings.log_level)
        if worker.stop_signalled:  # SIGTERM/SIGINT: stop, do not take more work
            return
        queued, scheduled = pending_work(queue)
        running = StartedJobRegistry(queue=queue).count
        # A failing job moves from "started" to "scheduled" in more than one step: only a
        # second idle look, a moment later, proves that nothing is left.
        idle_checks = idle_checks + 1 if not (queued or scheduled or running) else 0
        if idle_checks >= 2:
            return
        # Retries wait in the scheduled registry; whichever process holds the lock moves the
        # due ones. Jobs of a worker that died (SIGKILL) stay "started" until their heartbeat
        # expires; the cleanup then hands them to RQ's retry, so they are not waited on forever.
        if connection.set(burst_lock_key(settings.queue_name), index, nx=True, px=2000):
            enqueue_due_retries(queue)
            StartedJobRegistry(queue=queue).cleanup()
            connection.delete(burst_lock_key(settings.queue_name))
        time.sleep(0.25)


def run_workers(settings: Settings, connection: redis.Redis, workers: int, burst: bool) -> None:
    """Run the pool; with ``burst``, return only when nothing is queued or waiting for a retry.

    RQ's own burst mode stops a worker as soon as the queue is empty, so four of five workers
    would quit while the fan-out job is still queueing chunks. Here each burst worker goes on
    while any job is queued, running or waiting for its retry.
    """
    if not burst:
        run_pool(settings, connection, workers, burst=False)
        return
    preload()
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

"""The hourly schedule, kept in one small module so ``rq cron`` could replace rq-scheduler."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from rq.job import Job
from rq_scheduler import Scheduler

from ..defaults import FANOUT_TIMEOUT_SECONDS
from ..ledger.retention import RUN_SECONDS
from ..logs import get_logger
from ..settings import Settings
from .catchup import enqueue_catch_up
from .fanout import report_all_sensor_counts
from .held import recount_held_reports
from .period_close import close_periods
from .queue import JSONJob
from .recovery import sweep_stale_reports
from .retention import prune_ledger

log = get_logger(__name__)

HOURLY_JOB_PREFIX = "sensormeter-hourly"  # rq 2.8+ refuses ':' in job ids.
HOURLY_CRON = "0 * * * *"


def next_hour_utc(now: datetime | None = None) -> datetime:
    """The next top of the hour in UTC, strictly after ``now`` (aware datetime)."""
    now = now or datetime.now(UTC)
    return now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)


def use_utc_clock() -> None:
    """Make this process's local time UTC: rq-scheduler reads cron strings in local time."""
    os.environ["TZ"] = "UTC"
    time.tzset()


def make_scheduler(queue_name: str, connection: object, interval: int = 5) -> Scheduler:
    """An rq-scheduler Scheduler that stores its jobs as JSON."""
    return Scheduler(
        queue_name=queue_name, connection=connection, interval=interval, job_class=JSONJob
    )


class ReportingScheduler(Scheduler):  # type: ignore[misc]
    """rq-scheduler that re-registers its jobs, and catches up, when Redis has lost them."""

    def __init__(self, settings: Settings, connection: object, interval: int = 5) -> None:
        super().__init__(
            queue_name=settings.queue_name,
            connection=connection,
            interval=interval,
            job_class=JSONJob,
        )
        self.settings = settings
        self.tick_seconds = interval

    def start(self) -> None:
        """Register every scheduled job and queue a catch-up that includes the current hour."""
        register_all(self, self.settings.queue_name)
        enqueue_catch_up(self.settings, self.connection, include_current=True)

    def enqueue_jobs(self) -> Any:
        """Each tick: if the registrations are gone (Redis restarted empty), start over."""
        queue_name = self.settings.queue_name
        if self.connection.zscore(self.scheduled_jobs_key, hourly_job_id(queue_name)) is None:
            log.warning("scheduler.registrations_lost", queue=queue_name)
            self.start()
        return super().enqueue_jobs()

    def run(self, burst: bool = False) -> None:
        """Start (register, catch up), then run rq-scheduler's loop, waiting out Redis outages.

        rq-scheduler's own loop dies on the first Redis error; a restarted Redis (or a
        failover), even one during start-up, must not stop the hourly reports. Built from
        rq-scheduler's public steps (birth, heartbeat, lock, enqueue, death) only.
        """
        for stop_signal in (signal.SIGINT, signal.SIGTERM):
            signal.signal(stop_signal, self._stop)
        born = started_up = False
        # After a Redis error this process cannot know whether the lock is still its own (it
        # may have expired and been taken by another scheduler): then it is left to expire.
        lock_known = True
        try:
            while True:
                began = time.time()
                try:
                    if not born:
                        self.register_birth()
                        born = True
                    if not started_up:
                        self.start()
                        started_up = True
                        log.info(
                            "scheduler.started",
                            queue=self.settings.queue_name,
                            next_hourly_run=str(scheduled_run_time(self, self.settings.queue_name)),
                        )
                    self.heartbeat()
                    got_lock = self.acquire_lock()
                    lock_known = True
                    if got_lock:
                        self.enqueue_jobs()
                        self.heartbeat()
                        self.remove_lock()
                        if burst:
                            return
                except (redis.ConnectionError, redis.TimeoutError) as exc:
                    lock_known = False
                    log.warning("scheduler.redis_unavailable", error=str(exc))
                time.sleep(max(0.0, self.tick_seconds - (time.time() - began)))
        finally:
            with contextlib.suppress(redis.RedisError):
                if lock_known:
                    self.remove_lock()
                self.register_death()

    def _stop(self, _signum: int, _frame: object) -> None:
        """SIGTERM/SIGINT: leave the loop; ``run`` then removes the lock and registers death."""
        self.log.info("Shutting down RQ scheduler...")
        raise SystemExit()


def hourly_job_id(queue_name: str) -> str:
    """The fixed id of the hourly job for a queue (one per queue, so a demo queue is separate)."""
    return f"{HOURLY_JOB_PREFIX}-{queue_name}"


def _register(
    scheduler: Scheduler,
    job_id: str,
    cron: str,
    func: Any,
    queue_name: str,
    description: str,
    timeout: int = 600,
) -> Job:
    """Schedule ``func`` under a fixed id, cancelling an earlier registration first."""
    if job_id in scheduler:
        scheduler.cancel(job_id)
    job: Job = scheduler.cron(
        cron,
        func=func,
        id=job_id,
        queue_name=queue_name,
        result_ttl=3600,
        timeout=timeout,
        use_local_timezone=False,
        description=description,
    )
    return job


def register_hourly_job(scheduler: Scheduler, queue_name: str | None = None) -> Job:
    """Schedule the fan-out at minute 0 UTC every hour; safe to call on every start.

    Any earlier registration under the same id is cancelled first, so three calls leave
    one job (and a changed cron string is picked up).
    """
    queue_name = queue_name or scheduler.queue_name
    job = _register(
        scheduler,
        hourly_job_id(queue_name),
        HOURLY_CRON,
        report_all_sensor_counts,
        queue_name,
        "hourly: report all sensor counts",
        timeout=FANOUT_TIMEOUT_SECONDS,
    )
    # rq-scheduler computes the first run from the LOCAL clock; with TZ=Asia/Kolkata that is
    # minute 30 UTC. Put the first run at the next top of the hour in UTC ourselves; later runs
    # are computed by the scheduler process, which runs with TZ=UTC (see use_utc_clock).
    scheduler.connection.zadd(
        scheduler.scheduled_jobs_key, {job.id: int(next_hour_utc().timestamp())}
    )
    return job


SWEEP_CRON = "*/10 * * * *"


def sweep_job_id(queue_name: str) -> str:
    """The fixed id of the stale-pending sweep for a queue."""
    return f"sensormeter-sweep-{queue_name}"


def register_sweep_job(scheduler: Scheduler, queue_name: str | None = None) -> Job:
    """Every 10 minutes, resend pending rows whose job was lost; safe to call on every start."""
    queue_name = queue_name or scheduler.queue_name
    return _register(
        scheduler,
        sweep_job_id(queue_name),
        SWEEP_CRON,
        sweep_stale_reports,
        queue_name,
        "every 10 minutes: resend pending reports whose job was lost",
    )


def scheduled_run_time(scheduler: Scheduler, queue_name: str) -> datetime | None:
    """When the hourly job of ``queue_name`` runs next (aware UTC), or None if not scheduled."""
    score = scheduler.connection.zscore(scheduler.scheduled_jobs_key, hourly_job_id(queue_name))
    return None if score is None else datetime.fromtimestamp(float(score), UTC)


CLOSE_CRON = "* * * * *"


def close_job_id(queue_name: str) -> str:
    """The fixed id of the period-close check for a queue."""
    return f"sensormeter-close-{queue_name}"


def register_close_job(scheduler: Scheduler, queue_name: str | None = None) -> Job:
    """Every minute, queue reports for billing periods about to end; safe on every start."""
    queue_name = queue_name or scheduler.queue_name
    return _register(
        scheduler,
        close_job_id(queue_name),
        CLOSE_CRON,
        close_periods,
        queue_name,
        "every minute: report the count of billing periods about to end",
    )


HELD_CRON = "* * * * *"


def held_job_id(queue_name: str) -> str:
    """The fixed id of the held-report recount for a queue."""
    return f"sensormeter-held-{queue_name}"


def register_held_job(scheduler: Scheduler, queue_name: str | None = None) -> Job:
    """Every minute, recount and send the reports the anomaly guard held; safe on every start."""
    queue_name = queue_name or scheduler.queue_name
    return _register(
        scheduler,
        held_job_id(queue_name),
        HELD_CRON,
        recount_held_reports,
        queue_name,
        "every minute: recount the reports the anomaly guard held, and send them",
    )


# Minute 30: away from the fan-out and its reports at the top of the hour.
RETENTION_CRON = "30 * * * *"


def retention_job_id(queue_name: str) -> str:
    """The fixed id of the ledger prune for a queue."""
    return f"sensormeter-retention-{queue_name}"


def register_retention_job(scheduler: Scheduler, queue_name: str | None = None) -> Job:
    """Every hour at minute 30 UTC, remove what is older than the retention; safe on every start."""
    queue_name = queue_name or scheduler.queue_name
    return _register(
        scheduler,
        retention_job_id(queue_name),
        RETENTION_CRON,
        prune_ledger,
        queue_name,
        "hourly: remove ledger rows older than SENSORMETER_RETENTION_DAYS",
        # Its budget, then the batch under way and the daily history prune.
        timeout=int(RUN_SECONDS) + 600,
    )


def register_all(scheduler: Scheduler, queue_name: str) -> None:
    """Register the hourly fan-out, the sweep, the period-close check, the held recount and
    the ledger prune."""
    register_hourly_job(scheduler, queue_name)
    register_sweep_job(scheduler, queue_name)
    register_close_job(scheduler, queue_name)
    register_held_job(scheduler, queue_name)
    register_retention_job(scheduler, queue_name)


def unregister_all(scheduler: Scheduler, queue_name: str) -> None:
    """Cancel the registrations of ``queue_name`` and delete their job hashes."""
    for job_id in (
        hourly_job_id(queue_name),
        sweep_job_id(queue_name),
        close_job_id(queue_name),
        held_job_id(queue_name),
        retention_job_id(queue_name),
    ):
        scheduler.cancel(job_id)
        # cancel() only takes the id out of the schedule; the job's hash has no TTL.
        scheduler.connection.delete(Job.key_for(job_id))

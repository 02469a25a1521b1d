"""Processes dying or doubling: SIGKILL and SIGTERM mid-chunk, two fan-outs, two schedulers."""

from __future__ import annotations

import signal
import time

import redis
from rq_scheduler import Scheduler

from sensormeter.emulator import StripeEmulator
from sensormeter.settings import Settings
from sensormeter.tasks.fanout import enqueue_fanout
from sensormeter.tasks.queue import JSONJob
from sensormeter.tasks.schedule import (
    close_job_id,
    held_job_id,
    hourly_job_id,
    retention_job_id,
    sweep_job_id,
)

from .conftest import (
    assert_billed_exactly_once,
    current_hour,
    run_cli,
    seed,
    start_cli,
    stop_group,
    wait_for,
)


def connection(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url)


def test_worker_killed_mid_chunk(
    fault_settings: Settings, fault_db: object, emulator: StripeEmulator
) -> None:
    """SIGKILL to the worker dyno mid-chunk: the abandoned job is retried, nothing doubles."""
    settings = fault_settings.with_overrides(job_timeout_seconds=10)
    customers = seed(15)
    hour = current_hour()
    emulator.set_latency(0.5)
    enqueue_fanout(settings, connection(settings), hour)
    dyno = start_cli(settings, "worker", "-n", "2")
    assert wait_for(lambda: emulator.request_count() >= 3, 60), "no chunk started"
    stop_group(dyno, signal.SIGKILL)
    assert len(emulator.events()) < len(customers)  # really cut off mid-way
    from sensormeter.models import MeterReport

    # A chunk was cut off between writing its rows and recording the answers.
    assert MeterReport.select().where(MeterReport.status == "pending").count() > 0
    emulator.set_latency(0)
    # A new dyno: RQ notices the dead worker's job once its heartbeat expires, and retries it.
    done = run_cli(settings, "worker", "-n", "2", "--burst", timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_billed_exactly_once(emulator, customers, hour)


def test_dyno_restart_mid_chunk(
    fault_settings: Settings, fault_db: object, emulator: StripeEmulator
) -> None:
    """SIGTERM to every process of the dyno mid-chunk: clean exit, then everything lands once."""
    customers = seed(15)
    hour = current_hour()
    emulator.set_latency(1.0)
    enqueue_fanout(fault_settings, connection(fault_settings), hour)
    dyno = start_cli(fault_settings, "worker", "-n", "2")
    assert wait_for(lambda: emulator.request_count() >= 2, 60), "no chunk started"
    started = time.monotonic()
    stop_group(dyno, signal.SIGTERM, timeout=30)  # Heroku's SIGKILL follows after 30 s
    assert time.monotonic() - started < 30
    emulator.set_latency(0)
    done = run_cli(fault_settings, "worker", "-n", "2", "--burst", timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_billed_exactly_once(emulator, customers, hour)


def test_two_fanouts_of_the_same_hour_at_once(
    fault_settings: Settings, fault_db: object, emulator: StripeEmulator
) -> None:
    """Two fan-outs of one hour, run concurrently by three workers, bill each hour once."""
    customers = seed(20)
    hour = current_hour()
    emulator.set_latency(0.05)
    for _ in range(2):
        enqueue_fanout(fault_settings, connection(fault_settings), hour)
    done = run_cli(fault_settings, "worker", "-n", "3", "--burst", timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_billed_exactly_once(emulator, customers, hour)


def test_two_scheduler_processes(
    fault_settings: Settings, fault_db: object, emulator: StripeEmulator
) -> None:
    """Two schedulers: one hourly job registered, its tick billed once, both stop on SIGTERM."""
    customers = seed(10)
    conn = connection(fault_settings)
    schedulers = [start_cli(fault_settings, "scheduler", "--interval", "1") for _ in range(2)]
    job_id = hourly_job_id(fault_settings.queue_name)
    reader = Scheduler(connection=conn, job_class=JSONJob)
    assert wait_for(lambda: job_id in reader, 30), "the hourly job was not registered"
    time.sleep(1.5)  # both have registered by now
    ids = sorted(j.id for j in reader.get_jobs())
    queue = fault_settings.queue_name
    assert ids == sorted(
        [
            job_id,
            sweep_job_id(queue),
            close_job_id(queue),
            held_job_id(queue),
            retention_job_id(queue),
        ]
    )
    # Bring the tick forward to now: both schedulers see it due at the same moment.
    conn.zadd(reader.scheduled_jobs_key, {job_id: int(time.time())})
    queue_key = f"rq:queue:{fault_settings.queue_name}"
    assert wait_for(lambda: conn.llen(queue_key) >= 1, 30), "the tick was not queued"
    time.sleep(2)
    for scheduler in schedulers:
        assert stop_group(scheduler, signal.SIGTERM, timeout=20) == 0
    hour = current_hour()
    done = run_cli(fault_settings, "worker", "-n", "2", "--burst", timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_billed_exactly_once(emulator, customers, hour)

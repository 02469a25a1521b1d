"""Redis restarted with its data lost while report jobs are queued."""

from __future__ import annotations

import signal
from datetime import UTC, datetime, timedelta

import redis

from sensormeter.emulator import StripeEmulator
from sensormeter.settings import Settings
from sensormeter.tasks.fanout import enqueue_fanout
from sensormeter.tasks.schedule import hourly_job_id, make_scheduler

from .conftest import (
    RedisServer,
    assert_billed_exactly_once,
    current_hour,
    log_tail,
    run_cli,
    seed,
    start_cli,
    stop_group,
    wait_for,
)


def test_redis_restarted_empty_while_jobs_are_queued(
    fault_settings: Settings,
    fault_db: object,
    emulator: StripeEmulator,
    redis_server: RedisServer,
) -> None:
    """Queued jobs vanish with Redis; the scheduler re-registers, catches up, bills once."""
    customers = seed(12)
    conn = redis.Redis.from_url(fault_settings.redis_url)
    previous = f"{datetime.now(UTC) - timedelta(hours=1):%Y-%m-%dT%H}"
    hour = current_hour()
    # Sensormeter has been reporting these organizations: the previous hour is in the ledger.
    enqueue_fanout(fault_settings, conn, previous)
    done = run_cli(fault_settings, "worker", "-n", "2", "--burst", timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_billed_exactly_once(emulator, customers, previous)
    scheduler = start_cli(fault_settings, "scheduler", "--interval", "1")
    try:
        reader = make_scheduler(fault_settings.queue_name, conn)
        assert wait_for(lambda: hourly_job_id(fault_settings.queue_name) in reader, 30), log_tail(
            scheduler
        )
        enqueue_fanout(fault_settings, conn, hour)  # this hour's work, queued, no worker yet
        queue_key = f"rq:queue:{fault_settings.queue_name}"
        assert conn.llen(queue_key) >= 1
        sent_before = len(emulator.events())
        redis_server.kill()  # no persistence: every queued job and registration is gone
        redis_server.start()
        conn = redis.Redis.from_url(fault_settings.redis_url)
        reader = make_scheduler(fault_settings.queue_name, conn)
        # The scheduler survives the outage, notices its jobs are gone and queues a catch-up.
        assert wait_for(lambda: hourly_job_id(fault_settings.queue_name) in reader, 30), log_tail(
            scheduler
        )
        assert wait_for(lambda: conn.llen(queue_key) >= 1, 30), log_tail(scheduler)
        assert len(emulator.events()) == sent_before  # nothing of this hour was sent yet
        done = run_cli(fault_settings, "worker", "-n", "2", "--burst", timeout=180)
        assert done.returncode == 0, done.stderr[-3000:]
        assert_billed_exactly_once(emulator, customers, hour)
    finally:
        assert stop_group(scheduler, signal.SIGTERM, timeout=20) == 0, log_tail(scheduler)
    assert_billed_exactly_once(emulator, customers, hour)
    assert_billed_exactly_once(emulator, customers, previous)

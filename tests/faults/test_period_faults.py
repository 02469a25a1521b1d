"""Billing periods that end while sensormeter is down: each still closes on its final count."""

from __future__ import annotations

import time
from datetime import datetime, timedelta

import redis
from rq_scheduler import Scheduler

from sensormeter.emulator import StripeEmulator
from sensormeter.hours import format_hour, hour_start
from sensormeter.models import Organization, Sensor, Subscription, utcnow
from sensormeter.settings import Settings
from sensormeter.tasks.queue import JSONJob
from sensormeter.tasks.schedule import close_job_id

from .conftest import assert_billed_exactly_once, assert_period_closed, run_cli


def subscribe(org: str, start: datetime, end: datetime) -> None:
    """A billable organization (customer cus_<org>) with a subscription for start..end."""
    Organization.create(id=org, name=org)
    Subscription.create(
        organization=org,
        status="active",
        stripe_customer_id=f"cus_{org}",
        current_period_start=start,
        current_period_end=end,
    )


def sensors_changing_around(org: str, end: datetime) -> None:
    """Sensors counted 5 before the outage, 6 at ``end``, 7 now: created and deleted in it."""
    long_ago = end - timedelta(days=3)
    rows = [(long_ago, None)] * 3  # always there
    rows += [(long_ago, end - timedelta(minutes=40))]  # deleted in the period, in the outage
    rows += [(end - timedelta(minutes=25), None)] * 2  # created in the period, in the outage
    rows += [(long_ago, end + timedelta(minutes=30))]  # deleted in the next period
    rows += [(end + timedelta(minutes=10), None)] * 2  # created in the next period
    for created_at, deleted_at in rows:
        Sensor.create(organization=org, created_at=created_at, deleted_at=deleted_at)


def run_close_check(settings: Settings) -> None:
    """Make the registered every-minute close check due now and queue it, as the scheduler does."""
    connection = redis.Redis.from_url(settings.redis_url)
    scheduler = Scheduler(queue_name=settings.queue_name, connection=connection, job_class=JSONJob)
    job_id = close_job_id(settings.queue_name)
    assert job_id in scheduler, "the close check is not registered"
    connection.zadd(scheduler.scheduled_jobs_key, {job_id: int(time.time())})
    scheduler.enqueue_jobs()


def drain(settings: Settings) -> None:
    done = run_cli(settings, "worker", "-n", "2", "--burst", timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]


def test_period_ends_during_a_long_outage(
    fault_settings: Settings, fault_db: object, emulator: StripeEmulator
) -> None:
    """Scheduler and workers down for hours across two period ends (one renewed meanwhile)
    while sensors change: once they are back, each period's last event carries its final count.
    """
    now = utcnow().replace(microsecond=0)
    # Late in their hours, so the last hourly report of each period predates its final count.
    ended_at = hour_start(now) - timedelta(hours=3) + timedelta(minutes=47, seconds=13)
    renewed_at = hour_start(now) - timedelta(hours=2) + timedelta(minutes=38, seconds=3)
    subscribe("ended", ended_at - timedelta(days=30), ended_at)  # not renewed yet
    subscribe("renewed", renewed_at, renewed_at + timedelta(days=30))  # the old end is its start
    sensors_changing_around("ended", ended_at)
    sensors_changing_around("renewed", renewed_at)
    customers = {"ended": "cus_ended", "renewed": "cus_renewed"}
    # Before the outage sensormeter reported them (hour H0); then everything stopped.
    first_hour = hour_start(now) - timedelta(hours=5)
    queued = run_cli(fault_settings, "report-all", "--hour", format_hour(first_hour))
    assert queued.returncode == 0, queued.stderr
    drain(fault_settings)
    assert {e.value for e in emulator.events()} == {5}
    # Subscribed during the outage: its start is no previous period's end.
    subscribe("fresh", now - timedelta(minutes=80), now + timedelta(days=30))
    Sensor.create(organization="fresh", created_at=now - timedelta(minutes=80))

    started = run_cli(fault_settings, "scheduler", "--burst")  # registers, queues a catch-up
    assert started.returncode == 0, started.stderr[-3000:]
    run_close_check(fault_settings)
    drain(fault_settings)

    assert_period_closed(
        emulator, customers, {"ended": ended_at, "renewed": renewed_at}, {"ended": 6, "renewed": 6}
    )
    assert [e for e in emulator.events() if e.customer == "cus_fresh"] == []
    hour = first_hour
    while hour <= hour_start(utcnow()):
        assert_billed_exactly_once(emulator, customers, format_hour(hour))
        hour += timedelta(hours=1)
    # The following minutes' checks find both periods closed and send nothing more.
    sent = len(emulator.events())
    run_close_check(fault_settings)
    drain(fault_settings)
    assert len(emulator.events()) == sent

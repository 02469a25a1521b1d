"""Failed and abandoned reports are sent again with their own identifier and value."""

from __future__ import annotations

import subprocess
from datetime import timedelta

import redis
from rq import SimpleWorker
from rq.serializers import JSONSerializer

from sensormeter import report_all_sensor_counts
from sensormeter.emulator import StripeEmulator
from sensormeter.models import MeterReport, Sensor, utcnow
from sensormeter.report import Report
from sensormeter.reporter import Reporter
from sensormeter.runtime import Runtime
from sensormeter.tasks.queue import JSONJob, make_queue
from sensormeter.tasks.recovery import stale_after, sweep_stale_reports
from sensormeter.tasks.schedule import make_scheduler, register_sweep_job, sweep_job_id

from .conftest import SENSORMETER, TEST_QUEUE, cli_env
from .factories import make_org


def work(rt: Runtime) -> None:
    queue = make_queue(rt.settings, rt.redis)
    SimpleWorker([queue], connection=rt.redis, serializer=JSONSerializer, job_class=JSONJob).work(
        burst=True
    )


def test_retry_failed_resends_with_the_same_identifier(
    runtime: Runtime, emulator: StripeEmulator
) -> None:
    """`sensormeter failed` lists a failed report; `retry-failed` sends it, same id and value."""
    make_org("acme", active=3)
    emulator.inject(503, times=runtime.settings.max_retries + 1)
    report_all_sensor_counts()
    work(runtime)
    row = MeterReport.get()
    assert row.status == "failed"
    Sensor.create(organization="acme")  # the count changes: the stored value is what is resent
    env = cli_env(runtime.settings)
    listed = subprocess.run([*SENSORMETER, "failed"], env=env, capture_output=True, text=True)
    assert listed.returncode == 0 and "1 failed report(s)" in listed.stdout
    assert row.identifier in listed.stdout and "APIError" in listed.stdout
    queued = subprocess.run(
        [*SENSORMETER, "retry-failed"], env=env, capture_output=True, text=True, timeout=60
    )
    assert queued.returncode == 0, queued.stderr
    assert "queued 1 report(s) in 1 job(s)" in queued.stdout
    work(runtime)
    row = MeterReport.get()
    assert (row.status, row.value) == ("sent", 3)
    assert [(e.identifier, e.value) for e in emulator.events()] == [(row.identifier, 3)]


def test_failed_rejected_lists_refused_reports(runtime: Runtime, emulator: StripeEmulator) -> None:
    """`sensormeter failed --rejected` lists what Stripe refused, with its message."""
    make_org("acme", active=3)
    make_org("globex", active=1)
    emulator.inject(400, times=1)
    report_all_sensor_counts()
    work(runtime)
    [rejected] = MeterReport.select().where(MeterReport.status == "rejected")
    env = cli_env(runtime.settings)
    listed = subprocess.run(
        [*SENSORMETER, "failed", "--rejected"], env=env, capture_output=True, text=True
    )
    assert listed.returncode == 0 and "1 rejected report(s)" in listed.stdout
    assert rejected.identifier in listed.stdout and "Injected error" in listed.stdout
    plain = subprocess.run([*SENSORMETER, "failed"], env=env, capture_output=True, text=True)
    assert "0 failed report(s)" in plain.stdout


def test_sweep_resends_pending_rows_whose_job_was_lost(
    runtime: Runtime, emulator: StripeEmulator
) -> None:
    """A pending row untouched for longer than any job lives is resent; a recent one is not."""
    make_org("lost", active=2)
    make_org("live", active=1)
    reporter = Reporter(runtime.source, runtime.meter, runtime.settings.meter_event_name)
    # A job that wrote its rows and died before sending (SIGKILL, Redis lost its data).
    reporter.prepare(runtime.database, ["lost", "live"], Report.hourly(f"{utcnow():%Y-%m-%dT%H}"))
    old = utcnow() - stale_after(runtime.settings) - timedelta(minutes=1)
    MeterReport.update(updated_at=old).where(MeterReport.organization_id == "lost").execute()
    assert sweep_stale_reports() == {"stale_pending": 1, "jobs": 1}
    work(runtime)
    statuses = {r.organization_id: r.status for r in MeterReport.select()}
    assert statuses == {"lost": "sent", "live": "pending"}
    [event] = emulator.events()
    assert (event.customer, event.value) == ("cus_lost", 2)


def test_sweep_is_registered_once(redis_conn: redis.Redis) -> None:
    """Registering the sweep on every start leaves one job."""
    scheduler = make_scheduler(TEST_QUEUE, redis_conn)
    for _ in range(3):
        register_sweep_job(scheduler, TEST_QUEUE)
    assert [j.id for j in scheduler.get_jobs()] == [sweep_job_id(TEST_QUEUE)]

"""The demo: seed organizations, run the Procfile's processes in burst mode, show the result."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from ..emulator import StripeEmulator
from ..keys import PREFIX
from ..models import MeterReport, Organization, Sensor, Subscription, create_tables, utcnow
from ..runtime import Runtime, check_redis, make_redis
from ..settings import Settings

# (id, name, subscription status, Stripe customer, active sensors, inactive, deleted)
DEMO_ORGANIZATIONS = [
    ("acme", "Acme Corp", "active", "cus_demo_acme", 12, 1, 2),
    ("globex", "Globex", "trialing", "cus_demo_globex", 5, 0, 0),
    ("initech", "Initech", "trial", "cus_demo_initech", 3, 0, 1),
    ("umbrella", "Umbrella", "past_due", "cus_demo_umbrella", 40, 0, 0),
    ("hooli", "Hooli", "active", None, 7, 0, 0),
    ("stark", "Stark Industries", "canceled", "cus_demo_stark", 9, 0, 0),
]
DEMO_QUEUE = "sensormeter-demo"
LOG_FILE = "sensormeter-demo.log"
DEMO_DATABASE = "sqlite:///sensormeter-demo.db"


def seed(database: object) -> None:
    """Insert the demo organizations, subscriptions and sensors (replacing earlier demo rows)."""
    ids = [row[0] for row in DEMO_ORGANIZATIONS]
    # A fresh emulator knows no identifiers: clear the demo's own ledger rows so each run reports.
    MeterReport.delete().where(MeterReport.organization_id.in_(ids)).execute()
    Sensor.delete().where(Sensor.organization.in_(ids)).execute()
    Subscription.delete().where(Subscription.organization.in_(ids)).execute()
    Organization.delete().where(Organization.id.in_(ids)).execute()
    now = utcnow()
    for org_id, name, status, customer, active, inactive, deleted in DEMO_ORGANIZATIONS:
        Organization.create(id=org_id, name=name)
        Subscription.create(
            organization=org_id,
            status=status,
            stripe_customer_id=customer,
            current_period_start=now - timedelta(days=3),
            current_period_end=now + timedelta(days=27),
        )
        # insert_many takes its columns from the first row, so every row names all three.
        rows: list[tuple[str, bool, datetime | None]] = [(org_id, True, None)] * active
        rows += [(org_id, False, None)] * inactive
        rows += [(org_id, True, now)] * deleted
        Sensor.insert_many(
            rows, fields=[Sensor.organization, Sensor.is_active, Sensor.deleted_at]
        ).execute()


def demo_settings(base: Settings, emulator_url: str) -> Settings:
    """The demo's settings: the bundled emulator, a test key and a queue of its own."""
    # Always a file of its own: the demo deletes and re-seeds its organizations, which must
    # never happen in a database that DATABASE_URL points at.
    database_url = DEMO_DATABASE
    return base.with_overrides(
        stripe_api_base=emulator_url,
        stripe_api_key="sk_test_sensormeter_demo",
        queue_name=DEMO_QUEUE,
        database_url=database_url,
    )


def _env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "REDIS_URL": settings.redis_url,
            "DATABASE_URL": settings.database_url,
            "STRIPE_API_KEY": settings.stripe_api_key or "",
            "STRIPE_API_BASE": settings.stripe_api_base or "",
            "SENSORMETER_QUEUE": settings.queue_name,
        }
    )
    return env


def leave_nothing_behind(scheduler: Any, queue_name: str) -> None:
    """Remove the demo queue's registrations, jobs, registries and sensormeter keys from Redis."""
    from ..tasks.schedule import unregister_all

    unregister_all(scheduler, queue_name)
    connection = scheduler.connection
    queue = Queue(queue_name, connection=connection, serializer=JSONSerializer)
    registries = [
        queue.started_job_registry,
        queue.finished_job_registry,
        queue.failed_job_registry,
        queue.deferred_job_registry,
        queue.scheduled_job_registry,
        queue.canceled_job_registry,
    ]
    job_ids = set(queue.get_job_ids())
    for registry in registries:
        job_ids.update(registry.get_job_ids(cleanup=False))
    for job_id in job_ids:
        connection.delete(Job.key_for(job_id), f"{Job.key_for(job_id)}:dependents")
        connection.delete(f"rq:results:{job_id}")
    connection.delete(*(registry.key for registry in registries))
    queue.delete(delete_jobs=True)  # the queue's key, and its name in rq:queues
    # rq's own keys under the queue's name (its intermediate queue and first-seen marks) and
    # sensormeter's keys of the queue.
    for pattern in (f"{queue.key}:*", f"{PREFIX}:{queue_name}:*"):
        for key in connection.scan_iter(match=pattern, count=1000):
            connection.delete(key)


def run_demo(base: Settings, echo: Callable[[str], None], workers: int = 5) -> int:
    """Run the whole pipeline once on embedded defaults and print what Stripe received."""
    from ..tasks.fanout import enqueue_fanout
    from ..tasks.schedule import make_scheduler, scheduled_run_time

    with StripeEmulator() as emulator:
        settings = demo_settings(base, emulator.base_url)
        connection = make_redis(settings.redis_url)
        check_redis(connection, settings.redis_url)
        runtime = Runtime.build(settings, create_database=True)
        create_tables(runtime.database)
        seed(runtime.database)
        echo(f"Seeded {len(DEMO_ORGANIZATIONS)} demo organizations into {settings.database_url}")
        echo(f"Stripe emulator on {emulator.base_url}; queue {settings.queue_name!r}")
        enqueue_fanout(settings, connection)
        # The Procfile's two processes, in burst mode: five workers and the scheduler.
        cli = [sys.executable, "-m", "sensormeter.cli"]
        with open(LOG_FILE, "w") as logfile:
            procs = [
                subprocess.Popen(
                    [*cli, "scheduler", "--burst"],
                    env=_env(settings),
                    stdout=logfile,
                    stderr=logfile,
                ),
                subprocess.Popen(
                    [*cli, "worker", "-n", str(workers), "--burst"],
                    env=_env(settings),
                    stdout=logfile,
                    stderr=logfile,
                ),
            ]
            codes = [p.wait(timeout=600) for p in procs]
        echo(
            f"Ran 'sensormeter scheduler --burst' and 'sensormeter worker -n {workers} --burst'"
            f" (their logs: {LOG_FILE})"
        )
        scheduler = make_scheduler(settings.queue_name, connection)
        next_run = scheduled_run_time(scheduler, settings.queue_name)
        echo("")
        echo("Ledger (meter_reports):")
        echo(f"  {'organization':<12} {'value':>5}  {'status':<8} identifier")
        for row in (
            MeterReport.select()
            .where(MeterReport.event_name == settings.meter_event_name)
            .order_by(MeterReport.organization_id, MeterReport.id)
        ):
            echo(f"  {row.organization_id:<12} {row.value:>5}  {row.status:<8} {row.identifier}")
        echo("")
        echo("Meter events the Stripe emulator received:")
        for event in emulator.events():
            echo(
                f"  customer={event.customer:<18} value={event.value:<3} "
                f"identifier={event.identifier}"
            )
        echo("")
        echo("Not reported: umbrella (past_due), hooli (no Stripe customer), stark (canceled).")
        if next_run is not None:
            echo(
                "The scheduler registered the hourly report "
                f"(next run {next_run:%Y-%m-%d %H:%M} UTC); the demo removes its registrations"
                " and its queue again when it ends."
            )
        # The demo has done its part: a scheduler on this Redis must not keep queueing the
        # demo's jobs onto a queue no worker reads.
        leave_nothing_behind(scheduler, settings.queue_name)
        runtime.close()
    return 0 if all(code == 0 for code in codes) else 1

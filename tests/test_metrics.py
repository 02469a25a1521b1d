"""Prometheus metrics: parseable text that agrees with the ledger, Redis and rq-scheduler."""

from __future__ import annotations

import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from wsgiref.util import setup_testing_defaults

import peewee
import pytest
import redis
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from rq.executions import Execution
from rq.registry import FailedJobRegistry

from sensormeter import ledger
from sensormeter.hours import hour_start
from sensormeter.models import MeterReport, utcnow
from sensormeter.ops.metrics import make_metrics_app, make_metrics_server, make_registry
from sensormeter.ops.readings import window_start
from sensormeter.runtime import Runtime
from sensormeter.settings import Settings
from sensormeter.tasks.catchup import catch_up
from sensormeter.tasks.queue import make_queue
from sensormeter.tasks.recovery import stale_after
from sensormeter.tasks.schedule import make_scheduler, register_hourly_job, register_sweep_job

from .conftest import SENSORMETER, TEST_QUEUE, cli_env, count_queries
from .factories import make_org

EVENT = "active_sensors"
EPOCH = datetime(1970, 1, 1)
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def row(
    org: str,
    status: str,
    *,
    measured: datetime,
    kind: str = MeterReport.HOURLY,
    created: datetime | None = None,
    updated: datetime | None = None,
) -> None:
    """A ledger row as a report job leaves it (an hourly row of the hour it was measured in)."""
    hour = hour_start(measured)
    MeterReport.create(
        organization_id=org,
        event_name=EVENT,
        value=3,
        identifier=ledger.hourly_identifier(org, EVENT, hour)
        if kind == MeterReport.HOURLY
        else f"{EVENT}-{org}-r{measured:%H%M%S%f}",
        kind=kind,
        period_hour=hour if kind == MeterReport.HOURLY else None,
        stripe_customer_id=f"cus_{org}",
        measured_at=measured,
        status=status,
        created_at=created or measured,
        updated_at=updated or measured,
        sent_at=measured if status == MeterReport.SENT else None,
    )


def samples(text: str) -> Samples:
    """Every sample of Prometheus text, by name and labels (it must parse as Prometheus text)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(settings: Settings) -> str:
    """What a scrape of the collector returns, as Prometheus text."""
    return generate_latest(make_registry(settings)).decode()


def seconds(moment: datetime) -> float:
    return (moment - EPOCH).total_seconds()


@pytest.fixture
def fleet(runtime: Runtime) -> Iterator[dict[str, object]]:
    """Ledger rows of every status in and out of the window, a catch-up's finding, queue jobs
    in every state and two of the three registrations; yields what the test needs to know."""
    now = utcnow()
    h = hour_start(now)
    # acme: billable, reported 3 and 1 hours ago, not 2: the catch-up finds one missing hour.
    make_org("acme")
    row("acme", MeterReport.SENT, measured=h - timedelta(hours=3))
    row("acme", MeterReport.SENT, measured=h - timedelta(hours=1))
    finding = catch_up()
    make_queue(runtime.settings, runtime.redis).empty()  # the catch-up's own job: not counted
    # Rows of every status in the window (organizations the usage source does not know).
    row("newest", MeterReport.SENT, measured=now - timedelta(minutes=5))
    row("demand", MeterReport.SENT, measured=now - timedelta(minutes=1), kind=MeterReport.ON_DEMAND)
    row("fresh", MeterReport.PENDING, measured=now - timedelta(minutes=2))
    lost_at = now - stale_after(runtime.settings) - timedelta(minutes=5)
    row("lost", MeterReport.PENDING, measured=lost_at, created=lost_at, updated=lost_at)
    row("broken", MeterReport.FAILED, measured=h - timedelta(hours=2))
    row("refused", MeterReport.REJECTED, measured=h - timedelta(hours=4))
    # Outside the window: not in the counts, but its failed row is the oldest unsent one.
    old = now - timedelta(days=3)
    row("ancient", MeterReport.SENT, measured=old)
    row("ancient2", MeterReport.FAILED, measured=old - timedelta(hours=1), created=old)
    # Queue jobs: 2 queued, 1 started, 1 waiting for a retry, 1 failed.
    queue = make_queue(runtime.settings, runtime.redis)
    queue.enqueue("sensormeter.tasks.report.process_meter_report", ["a"])
    queue.enqueue("sensormeter.tasks.report.process_meter_report", ["b"])
    queue.enqueue_in(timedelta(hours=1), "sensormeter.tasks.report.process_meter_report", ["c"])
    running = queue.enqueue("sensormeter.tasks.report.process_meter_report", ["d"])
    queue.remove(running)
    with runtime.redis.pipeline() as pipe:
        Execution.create(running, ttl=600, pipeline=pipe)
        pipe.execute()
    broken = queue.enqueue("sensormeter.tasks.report.process_meter_report", ["e"])
    queue.remove(broken)
    FailedJobRegistry(queue=queue).add(broken, ttl=600, exc_string="boom")
    scheduler = make_scheduler(TEST_QUEUE, runtime.redis)
    register_hourly_job(scheduler, TEST_QUEUE)
    register_sweep_job(scheduler, TEST_QUEUE)
    yield {"now": now, "finding": finding}


class TestCollector:
    def test_metrics_parse_and_agree_with_the_ledger_and_redis(
        self, runtime: Runtime, fleet: dict[str, object]
    ) -> None:
        """Each number equals what the ledger, RQ and rq-scheduler hold, read another way."""
        before = utcnow()
        got = samples(scrape(runtime.settings))
        after = utcnow()
        since = window_start(runtime.settings, before)
        rows = list(MeterReport.select())
        in_window = [r for r in rows if r.measured_at >= since]
        for status in MeterReport.STATUSES:
            expected = sum(1 for r in in_window if r.status == status)
            assert got[("sensormeter_reports", (("status", status),))] == expected, status
        assert {
            s: got[("sensormeter_reports", (("status", s),))] for s in MeterReport.STATUSES
        } == {
            "sent": 4,
            "pending": 2,
            "failed": 1,
            "rejected": 1,
            "held": 0,
            "quarantined": 0,
            "superseded": 0,
        }
        newest = max(r.measured_at for r in in_window if r.status == "sent" and r.kind == "hourly")
        assert got[("sensormeter_last_hourly_report_timestamp_seconds", ())] == pytest.approx(
            seconds(newest), abs=1e-3
        )
        oldest = min(r.created_at for r in rows if r.status in ("pending", "failed"))
        age = got[("sensormeter_oldest_unsent_report_age_seconds", ())]
        assert (before - oldest).total_seconds() <= age <= (after - oldest).total_seconds()
        assert got[("sensormeter_abandoned_pending_reports", ())] == 1
        finding = fleet["finding"]
        assert isinstance(finding, dict) and finding["reports"] == 1
        assert got[("sensormeter_unreported_hours", ())] == 1
        assert seconds(before) - 60 <= got[("sensormeter_catchup_last_run_timestamp_seconds", ())]
        queue = make_queue(runtime.settings, runtime.redis)
        assert queue.count == 2
        assert {
            state: got[("sensormeter_queue_jobs", (("state", state),))]
            for state in ("queued", "started", "scheduled", "failed")
        } == {"queued": 2, "started": 1, "scheduled": 1, "failed": 1}
        assert {
            job: got[("sensormeter_schedule_registered", (("job", job),))]
            for job in ("hourly", "sweep", "period_close")
        } == {"hourly": 1, "sweep": 1, "period_close": 0}
        assert got[("sensormeter_up", (("service", "database"),))] == 1
        assert got[("sensormeter_up", (("service", "redis"),))] == 1

    def test_a_scrape_reads_fresh_values_each_time(
        self, runtime: Runtime, fleet: dict[str, object]
    ) -> None:
        """Nothing is kept between scrapes: a row failing in between shows in the next one."""
        key = ("sensormeter_reports", (("status", "failed"),))
        registry_first = samples(scrape(runtime.settings))[key]
        MeterReport.update(status=MeterReport.FAILED).where(
            MeterReport.organization_id == "fresh"
        ).execute()
        assert samples(scrape(runtime.settings))[key] == registry_first + 1

    def test_a_scrape_costs_the_same_few_queries_whatever_the_fleet(
        self, runtime: Runtime, fleet: dict[str, object]
    ) -> None:
        """No catch-up scan per scrape: the same statements for 1 or 41 organizations, and
        none reads the host's tables (the missing hours come from the catch-up's finding)."""
        with count_queries() as small:
            scrape(runtime.settings)
        for n in range(40):
            make_org(f"org{n:02d}")
            row(f"org{n:02d}", MeterReport.SENT, measured=utcnow() - timedelta(hours=1))
        with count_queries() as large:
            scrape(runtime.settings)
        assert len(large.statements) == len(small.statements) <= 8
        assert not any('"subscriptions"' in s or '"sensors"' in s for s in large.statements)

    def test_services_that_do_not_answer_show_as_down(
        self, runtime: Runtime, fleet: dict[str, object]
    ) -> None:
        """Redis down: sensormeter_up{service="redis"} 0 and the ledger numbers still come."""
        settings = replace(runtime.settings, redis_url="redis://127.0.0.1:1/0")
        got = samples(scrape(settings))
        assert got[("sensormeter_up", (("service", "redis"),))] == 0
        assert got[("sensormeter_up", (("service", "database"),))] == 1
        assert ("sensormeter_reports", (("status", "sent"),)) in got
        assert not any(name == "sensormeter_queue_jobs" for name, _ in got)
        settings = replace(runtime.settings, database_url="postgresql://u@127.0.0.1:1/x")
        got = samples(scrape(settings))
        assert got[("sensormeter_up", (("service", "database"),))] == 0
        assert got[("sensormeter_schedule_registered", (("job", "hourly"),))] == 1


class TestServing:
    def test_the_http_server_serves_metrics_at_slash_metrics(
        self, runtime: Runtime, fleet: dict[str, object]
    ) -> None:
        """``make_metrics_server`` on a free port answers GET /metrics; other paths are 404."""
        server = make_metrics_server(runtime.settings, "127.0.0.1", 0)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            base = f"http://127.0.0.1:{server.server_port}"
            with urllib.request.urlopen(f"{base}/metrics", timeout=30) as response:
                assert response.status == 200
                assert response.headers["Content-Type"].startswith("text/plain")
                got = samples(response.read().decode())
            assert got[("sensormeter_reports", (("status", "rejected"),))] == 1
            with pytest.raises(urllib.error.HTTPError) as missing:
                urllib.request.urlopen(f"{base}/other", timeout=30)
            assert missing.value.code == 404
        finally:
            server.shutdown()
            server.server_close()

    def test_the_wsgi_app_serves_the_same_exposition_where_it_is_mounted(
        self, runtime: Runtime, fleet: dict[str, object]
    ) -> None:
        """A host mounts ``make_metrics_app(settings)`` under its own path and auth."""
        app = make_metrics_app(runtime.settings)
        environ: dict[str, object] = {"PATH_INFO": "/internal/metrics", "REQUEST_METHOD": "GET"}
        setup_testing_defaults(environ)
        answer: list[str] = []
        body = b"".join(app(environ, lambda status, headers: answer.append(status)))
        assert answer == ["200 OK"]
        got = samples(body.decode())
        assert got[("sensormeter_reports", (("status", "pending"),))] == 2
        assert got == samples(scrape(runtime.settings)) | {
            key: value for key, value in got.items() if key[0].endswith("age_seconds")
        }

    def test_the_metrics_command_serves_until_stopped(
        self, settings: Settings, database: peewee.Database, redis_conn: redis.Redis
    ) -> None:
        """``sensormeter metrics --port 0`` says where it listens and serves Prometheus text."""
        row("acme", MeterReport.SENT, measured=utcnow())
        process = subprocess.Popen(
            [*SENSORMETER, "metrics", "--port", "0"],
            env=cli_env(settings),
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert process.stderr is not None
            line = process.stderr.readline()
            assert line.startswith("serving sensormeter metrics at http://127.0.0.1:"), line
            url = line.split(" at ", 1)[1].strip()
            with urllib.request.urlopen(url, timeout=30) as response:
                got = samples(response.read().decode())
            assert got[("sensormeter_reports", (("status", "sent"),))] == 1
            assert got[("sensormeter_schedule_registered", (("job", "hourly"),))] == 0
        finally:
            process.terminate()
            process.wait(timeout=30)
            if process.stderr is not None:
                process.stderr.close()

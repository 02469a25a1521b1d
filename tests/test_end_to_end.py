"""The real pipeline: ``sensormeter`` processes on real Redis, SQLite/PostgreSQL and the emulator.

Every test runs the commands a deployment runs (the Procfile's worker and scheduler, and
``report-all``/``report`` as a cron or the host app would call them) as subprocesses, then reads
the ledger, the queue and what the HTTP Stripe emulator received.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import peewee
import pytest
import redis
import stripe

from sensormeter.emulator import StripeEmulator
from sensormeter.hours import format_hour, hour_start
from sensormeter.ledger import hourly_identifier
from sensormeter.meters.ratelimit import THROTTLE_RETRIES
from sensormeter.models import MeterReport, Sensor, utcnow
from sensormeter.settings import Settings
from sensormeter.tasks.fanout import enqueue_fanout
from sensormeter.tasks.queue import make_queue
from sensormeter.tasks.report import enqueue_sensor_report
from sensormeter.tasks.schedule import make_scheduler, next_hour_utc, scheduled_run_time
from sensormeter.tasks.worker import pending_work

from .conftest import SENSORMETER, TEST_QUEUE, cli_env
from .factories import make_org

pytestmark = pytest.mark.integration

TIMEOUT = 60  # seconds; no process of these tests should come anywhere near it
LOG_TEST_KEY = "sk_test_E2eDistinctiveLogKey4242"
LOG_TEST_REDIS_PASSWORD = "e2e-redis-s3cret"

# The organizations seed_mixed_organizations() makes billable: (customer, active sensors).
BILLABLE = {
    "acme": ("cus_acme", 12),
    "globex": ("cus_globex", 5),
    "initech": ("cus_initech", 3),
    "vacant": ("cus_vacant", 0),
}


def seed_mixed_organizations() -> None:
    """Billable: active, trialing and "trial" subscriptions with a customer; the rest are not."""
    make_org("acme", status="active", active=12, inactive=1, deleted=2)
    make_org("globex", status="trialing", active=5)
    make_org("initech", status="trial", active=3, deleted=1)
    make_org("vacant", status="active", inactive=2)
    make_org("umbrella", status="past_due", active=40)
    make_org("stark", status="canceled", active=9)
    make_org("hooli", status="active", customer=None, active=7)
    make_org("blank", status="active", customer="", active=2)


def sensormeter(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run one ``sensormeter`` command to completion and require a zero exit status."""
    done = subprocess.run(
        [*SENSORMETER, *args],
        env=cli_env(settings, **env),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, f"sensormeter {' '.join(args)}:\n{done.stderr[-3000:]}"
    return done


def run_together(settings: Settings, *commands: list[str]) -> list[tuple[int, str]]:
    """Start several ``sensormeter`` processes at once (like a Procfile); return (exit, stderr)."""
    procs = [
        subprocess.Popen(
            [*SENSORMETER, *command],
            env=cli_env(settings),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for command in commands
    ]
    results = []
    try:
        for proc in procs:
            _, stderr = proc.communicate(timeout=TIMEOUT)
            results.append((proc.returncode, stderr))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return results


def with_redis_password(url: str, password: str) -> tuple[str, str]:
    """``url`` with ``password`` in it (unless it has one); returns (url, password it carries).

    Redis 6+ lets the default ``nopass`` user authenticate with any password, so the local
    test Redis accepts a URL with a made-up one.
    """
    parts = urlsplit(url)
    if parts.password:
        return url, parts.password
    return urlunsplit(parts._replace(netloc=f":{password}@{parts.netloc}")), password


def send_directly(settings: Settings, identifier: str, *, customer: str, value: int) -> None:
    """Send one meter event to the emulator with stripe-python, bypassing sensormeter."""
    base = settings.stripe_api_base
    client = stripe.StripeClient(
        settings.stripe_api_key or "",
        base_addresses={"api": base, "meter_events": base},
        max_network_retries=0,
    )
    client.v1.billing.meter_events.create(
        params={
            "event_name": settings.meter_event_name,
            "identifier": identifier,
            "timestamp": int(time.time()),
            "payload": {
                settings.customer_payload_key: customer,
                settings.value_payload_key: str(value),
            },
        }
    )


def queued_job_id(done: subprocess.CompletedProcess[str]) -> str:
    """The job id from ``queued <job id> on <queue>``, what ``report``/``report-all`` print."""
    words = done.stdout.split()
    assert words[:1] == ["queued"] and words[2:] == ["on", TEST_QUEUE], done.stdout
    return words[1]


def assert_nothing_left(settings: Settings, connection: redis.Redis) -> None:
    """No job is queued or waiting in the scheduled registry for a retry."""
    assert pending_work(make_queue(settings, connection)) == (0, 0)


def is_json_object(line: str) -> bool:
    """True when the line is one JSON object (a structured log line)."""
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def json_lines(stderr: str) -> list[dict[str, Any]]:
    """The JSON log lines of a process's stderr, parsed (other lines are skipped)."""
    return [json.loads(line) for line in stderr.splitlines() if is_json_object(line)]


def live_processes(group: int) -> list[int]:
    """Pids of the processes of a process group that have not exited (zombies do not count)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text() if entry.name.isdigit() else ""
        except OSError:  # the process ended while we looked
            continue
        if stat:
            state, _, pgrp = stat.rsplit(")", 1)[1].split()[:3]
            if int(pgrp) == group and state != "Z":
                pids.append(int(entry.name))
    return pids


def rows_by_org() -> dict[str, MeterReport]:
    """Every ledger row, by organization (the tests make at most one row per organization)."""
    rows = list(MeterReport.select())
    by_org = {row.organization_id: row for row in rows}
    assert len(by_org) == len(rows), "more than one ledger row for an organization"
    return by_org


class TestHourlyRun:
    def test_procfile_processes_report_every_billable_organization_once(
        self,
        settings: Settings,
        database: peewee.Database,
        redis_conn: redis.Redis,
        emulator: StripeEmulator,
    ) -> None:
        """report-all, then the scheduler and a pool of two workers send one event per org."""
        settings = settings.with_overrides(chunk_size=2)  # two chunk jobs: work for both workers
        seed_mixed_organizations()
        started = datetime.now(UTC)
        sensormeter(settings, "report-all")
        results = run_together(settings, ["scheduler", "--burst"], ["worker", "-n", "2", "--burst"])
        finished = datetime.now(UTC)
        assert [code for code, _ in results] == [0, 0], [err[-2000:] for _, err in results]

        events = emulator.events()
        assert sorted((e.customer, e.value) for e in events) == sorted(BILLABLE.values())
        assert {e.event_name for e in events} == {settings.meter_event_name}

        rows = rows_by_org()
        assert sorted(rows) == sorted(BILLABLE)
        [period] = {row.period_hour for row in rows.values()}  # one hour for the whole run
        assert period in {hour_start(t.replace(tzinfo=None)) for t in (started, finished)}
        for org, row in rows.items():
            assert (row.status, row.kind, row.attempts) == ("sent", "hourly", 1)
            assert (row.stripe_customer_id, row.value) == BILLABLE[org]
            assert row.identifier == hourly_identifier(org, settings.meter_event_name, period)
        assert sorted(e.identifier for e in events) == sorted(r.identifier for r in rows.values())

        next_run = scheduled_run_time(make_scheduler(TEST_QUEUE, redis_conn), TEST_QUEUE)
        assert next_run is not None, "the scheduler did not register the hourly job"
        assert next_run in {next_hour_utc(started), next_hour_utc(finished)}
        assert_nothing_left(settings, redis_conn)

    def test_second_run_in_the_same_hour_sends_nothing(
        self,
        settings: Settings,
        database: peewee.Database,
        redis_conn: redis.Redis,
        emulator: StripeEmulator,
    ) -> None:
        """A second report-all and worker in the same hour add no event and no ledger row."""
        seed_mixed_organizations()
        sensormeter(settings, "report-all")
        sensormeter(settings, "worker", "-n", "2", "--burst")
        [period] = {row.period_hour for row in MeterReport.select()}
        events, requests, rows = emulator.events(), emulator.request_count(), rows_by_org()
        assert len(events) == len(BILLABLE)
        # The hour is given, so a run that happens to straddle the top of the hour stays exact.
        sensormeter(settings, "report-all", "--hour", format_hour(period))
        sensormeter(settings, "worker", "-n", "2", "--burst")
        assert emulator.events() == events
        assert emulator.request_count() == requests  # the ledger said "sent": nothing was re-sent
        assert {o: (r.id, r.status) for o, r in rows_by_org().items()} == {
            o: (r.id, r.status) for o, r in rows.items()
        }
        assert_nothing_left(settings, redis_conn)


class TestOnDemandReport:
    def test_repeated_calls_send_one_event(
        self,
        settings: Settings,
        database: peewee.Database,
        redis_conn: redis.Redis,
        emulator: StripeEmulator,
    ) -> None:
        """Three ``report`` calls before a worker runs queue one job and send one event."""
        make_org("acme", active=3, inactive=1)
        job_ids = {queued_job_id(sensormeter(settings, "report", "acme")) for _ in range(3)}
        assert len(job_ids) == 1
        assert make_queue(settings, redis_conn).count == 1
        sensormeter(settings, "worker", "--burst")
        [event] = emulator.events()
        assert (event.customer, event.value) == ("cus_acme", 3)
        row = MeterReport.get()
        assert (row.kind, row.status, row.identifier) == ("on_demand", "sent", event.identifier)
        assert {row.job_id} == job_ids  # the job the calls printed is the one that reported
        assert_nothing_left(settings, redis_conn)

    def test_changed_count_is_sent_under_a_new_identifier(
        self,
        settings: Settings,
        database: peewee.Database,
        redis_conn: redis.Redis,
        emulator: StripeEmulator,
    ) -> None:
        """After a report ran, changing the sensors and calling again sends the new count."""
        make_org("acme", active=3)
        first = queued_job_id(sensormeter(settings, "report", "acme"))
        sensormeter(settings, "worker", "--burst")
        Sensor.create(organization="acme")
        Sensor.create(organization="acme")
        removed = Sensor.select().order_by(Sensor.id).first()
        removed.deleted_at = utcnow()
        removed.save()
        second = queued_job_id(sensormeter(settings, "report", "acme"))
        sensormeter(settings, "worker", "--burst")
        assert first != second
        events = emulator.events()
        assert [(e.customer, e.value) for e in events] == [("cus_acme", 3), ("cus_acme", 4)]
        assert events[0].identifier != events[1].identifier
        assert [r.status for r in MeterReport.select()] == ["sent", "sent"]


class TestStripeErrors:
    """The fan-out is queued in-process (``report-all`` has its own tests); the worker is real."""

    def test_rate_limit_is_retried_until_sent(
        self,
        settings: Settings,
        database: peewee.Database,
        redis_conn: redis.Redis,
        emulator: StripeEmulator,
    ) -> None:
        """429s outlasting the tries inside the job are retried by RQ: 'sent' after two attempts."""
        make_org("acme", active=2)
        emulator.inject(429, times=THROTTLE_RETRIES + 1)
        enqueue_fanout(settings, redis_conn)
        sensormeter(settings, "worker", "--burst")
        row = MeterReport.get()
        assert (row.status, row.attempts) == ("sent", 2)
        assert [e.identifier for e in emulator.events()] == [row.identifier]
        assert_nothing_left(settings, redis_conn)

    def test_server_errors_run_out_into_failed(
        self,
        settings: Settings,
        database: peewee.Database,
        redis_conn: redis.Redis,
        emulator: StripeEmulator,
    ) -> None:
        """Persistent 500s: the row ends 'failed' with the error, the worker exits 0, none left."""
        assert settings.max_retries == 2
        make_org("acme", active=2)
        emulator.inject(500, times=10, message="Meter storage is on fire.")
        enqueue_fanout(settings, redis_conn)
        sensormeter(settings, "worker", "--burst")  # exits 0 (checked by sensormeter())
        row = MeterReport.get()
        assert (row.status, row.attempts) == ("failed", settings.max_retries + 1)
        assert "Meter storage is on fire." in row.last_error
        assert emulator.events() == []
        assert emulator.request_count() == settings.max_retries + 1
        assert_nothing_left(settings, redis_conn)

    def test_duplicate_answer_counts_as_sent(
        self,
        settings: Settings,
        database: peewee.Database,
        redis_conn: redis.Redis,
        emulator: StripeEmulator,
    ) -> None:
        """Stripe answering 'already exists' for the identifier marks the row 'sent', no resend."""
        make_org("acme", active=2)
        hour = hour_start(utcnow())
        identifier = hourly_identifier("acme", settings.meter_event_name, hour)
        send_directly(settings, identifier, customer="cus_acme", value=2)
        enqueue_fanout(settings, redis_conn, format_hour(hour))
        sensormeter(settings, "worker", "--burst")
        row = MeterReport.get()
        assert (row.identifier, row.status, row.attempts) == (identifier, "sent", 1)
        assert row.last_error is None
        assert [e.identifier for e in emulator.events()] == [identifier]
        assert_nothing_left(settings, redis_conn)

    def test_rejection_is_final_and_spares_the_rest_of_the_chunk(
        self,
        settings: Settings,
        database: peewee.Database,
        redis_conn: redis.Redis,
        emulator: StripeEmulator,
    ) -> None:
        """A 400 marks its row 'rejected' with Stripe's message and request id; others are sent."""
        for org in ("acme", "globex", "initech"):
            make_org(org, active=2)
        emulator.inject(400, times=1, message="Invalid payload[value]: meter is archived.")
        enqueue_fanout(settings, redis_conn)
        sensormeter(settings, "worker", "--burst")
        rows = rows_by_org()
        [rejected] = [r for r in rows.values() if r.status == "rejected"]
        assert sorted(r.status for r in rows.values()) == ["rejected", "sent", "sent"]
        assert rejected.attempts == 1
        assert rejected.last_error == "Invalid payload[value]: meter is archived."
        assert (rejected.stripe_request_id or "").startswith("req_")
        assert sorted(e.identifier for e in emulator.events()) == sorted(
            r.identifier for r in rows.values() if r.status == "sent"
        )
        assert emulator.request_count() == 3  # a rejection is never retried
        assert_nothing_left(settings, redis_conn)


class TestWorkerLogs:
    @pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # not about the database
    def test_worker_logs_json_lines_without_secrets(
        self,
        settings: Settings,
        database: peewee.Database,
        redis_conn: redis.Redis,
        emulator: StripeEmulator,
    ) -> None:
        """The worker logs JSON job and report lines, never the Stripe key or Redis password."""
        redis_url, password = with_redis_password(settings.redis_url, LOG_TEST_REDIS_PASSWORD)
        settings = settings.with_overrides(stripe_api_key=LOG_TEST_KEY, redis_url=redis_url)
        seed_mixed_organizations()
        sensormeter(settings, "report-all")
        stderr = sensormeter(settings, "worker", "-n", "2", "--burst").stderr
        for secret in (LOG_TEST_KEY, LOG_TEST_KEY.removeprefix("sk_test_"), password):
            assert secret not in stderr
        lines = json_lines(stderr)
        completed = [line for line in lines if line["event"] == "job.completed"]
        # Every job writes the same envelope lines: the fan-out, its catch-up and unbilled
        # survey, the chunk.
        assert {line["job"] for line in completed} == {
            "report_all_sensor_counts",
            "catch_up",
            "survey_unbilled",
            "process_meter_report",
        }
        started = [line for line in lines if line["event"] == "job.started"]
        assert sorted(line["job"] for line in started) == sorted(line["job"] for line in completed)
        [chunk] = [line for line in completed if line["job"] == "process_meter_report"]
        assert chunk["job_id"].startswith("hourly-")
        assert chunk["organizations"] == len(BILLABLE)
        assert sorted(chunk["examples"]) == sorted(BILLABLE)  # four: all are examples
        assert chunk["total_value"] == sum(value for _, value in BILLABLE.values())
        reports = [line for line in lines if line["event"] == "report"]
        assert sorted(line["organization_id"] for line in reports) == sorted(BILLABLE)
        assert {(line["outcome"], line["status"]) for line in reports} == {("delivered", "sent")}

    @pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # not about the database
    def test_every_line_is_json_off_a_terminal(
        self,
        settings: Settings,
        database: peewee.Database,
        redis_conn: redis.Redis,
        emulator: StripeEmulator,
    ) -> None:
        """Off a terminal every line the worker writes is JSON, RQ's own lines included."""
        make_org("acme", active=1)
        enqueue_sensor_report("acme", settings=settings, connection=redis_conn)
        stderr = sensormeter(settings, "worker", "--burst").stderr
        assert json_lines(stderr), "the worker logged nothing"
        assert [line for line in stderr.splitlines() if not is_json_object(line)] == []


class TestWorkerBurst:
    @pytest.mark.parametrize(
        "signal_group",
        [
            pytest.param(True, id="every-process"),  # Heroku signals every process of the dyno
            # kill PID, timeout(1), supervisors that signal one process
            pytest.param(False, id="main-process"),
        ],
    )
    @pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # not about the database
    def test_sigterm_while_waiting_for_a_retry_ends_every_process(
        self,
        settings: Settings,
        database: peewee.Database,
        redis_conn: redis.Redis,
        emulator: StripeEmulator,
        signal_group: bool,
    ) -> None:
        """SIGTERM to ``worker -n 2 --burst`` waiting out a retry ends all its processes in 3 s."""
        settings = settings.with_overrides(max_retries=1, retry_backoff_seconds=60)
        make_org("acme", active=1)
        emulator.inject(500, times=1)
        enqueue_sensor_report("acme", settings=settings, connection=redis_conn)
        queue = make_queue(settings, redis_conn)
        worker = subprocess.Popen(
            [*SENSORMETER, "worker", "-n", "2", "--burst"],
            env=cli_env(settings),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + TIMEOUT
            while pending_work(queue) != (0, 1):  # the first attempt failed; the retry waits
                if time.monotonic() > deadline or worker.poll() is not None:
                    pytest.fail("the worker never got to waiting for the retry")
                time.sleep(0.1)
            time.sleep(1.2)  # let every worker process finish its job and start waiting
            if signal_group:
                os.killpg(worker.pid, signal.SIGTERM)
            else:
                os.kill(worker.pid, signal.SIGTERM)
            deadline = time.monotonic() + 3
            while live_processes(worker.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert live_processes(worker.pid) == []
        finally:
            if live_processes(worker.pid):
                os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=TIMEOUT)
        assert pending_work(queue) == (0, 1)  # the retry is kept for the next worker

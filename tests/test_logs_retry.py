"""An expected retry is one warning line with its reason; an unexpected error keeps its traceback.

Both run through a real ``sensormeter worker --burst`` process against the HTTP emulator, and
the test reads every line the worker wrote.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import peewee
import pytest
import redis

from sensormeter.emulator import StripeEmulator
from sensormeter.hours import format_hour, hour_start
from sensormeter.models import MeterReport, utcnow
from sensormeter.settings import Settings
from sensormeter.tasks.queue import job_options, make_queue
from sensormeter.tasks.report import process_meter_report

from .conftest import SENSORMETER, cli_env
from .factories import make_org

WARNING_LEVELS = ("warning", "error", "critical")


def run_worker(settings: Settings) -> list[dict[str, Any]]:
    """Every line of one ``sensormeter worker --burst`` run, parsed (each must be JSON)."""
    done = subprocess.run(
        [*SENSORMETER, "worker", "--burst"],
        env=cli_env(settings, SENSORMETER_LOG_FORMAT="json"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == ""
    return [json.loads(line) for line in done.stderr.splitlines()]


def of_job(lines: list[dict[str, Any]], job_id: str) -> list[dict[str, Any]]:
    return [line for line in lines if line.get("job_id") == job_id]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # not about the database
@pytest.mark.parametrize("fault", ["server-error", "rate-limited", "dropped-connection"])
def test_an_expected_retry_is_one_warning_line_without_a_traceback(
    settings: Settings,
    database: peewee.Database,
    redis_conn: redis.Redis,
    emulator: StripeEmulator,
    fault: str,
) -> None:
    """Stripe failing once: the job writes job.retrying with the reason, and no traceback."""
    make_org("acme", active=3)
    if fault == "server-error":
        emulator.inject(503, message="Stripe is down for a moment")
    elif fault == "rate-limited":
        emulator.inject(429, times=4)  # every try of one attempt: the event stays retryable
    else:
        emulator.inject_disconnect()
    queue = make_queue(settings, redis_conn)
    job = queue.enqueue(
        process_meter_report,
        ["acme"],
        hour=format_hour(hour_start(utcnow())),
        **job_options(settings),
    )

    lines = of_job(run_worker(settings), job.id)

    assert "Traceback" not in json.dumps(lines)
    # The job's one warning (the shared rate limit's own ratelimit.* lines aside).
    warnings = [
        line
        for line in lines
        if line["level"] in WARNING_LEVELS and not line["event"].startswith("ratelimit.")
    ]
    assert [(w["event"], w["level"], w["logger"]) for w in warnings] == [
        ("job.retrying", "warning", "sensormeter.tasks.envelope")
    ]
    reason = {
        "server-error": "APIError: Stripe is down for a moment",
        "rate-limited": "RateLimitError",
        "dropped-connection": "APIConnectionError",
    }[fault]
    assert warnings[0]["error"].startswith(reason)
    assert warnings[0]["unsettled_examples"] == ["acme"]
    # The retry then delivered the report.
    assert [line["event"] for line in lines].count("job.completed") == 1
    assert MeterReport.get(MeterReport.organization_id == "acme").status == "sent"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_an_unexpected_error_still_gets_its_traceback(
    settings: Settings, database: peewee.Database, redis_conn: redis.Redis
) -> None:
    """A job that raises for another reason logs job.failed and rq's line with the traceback."""
    make_org("acme", active=3)
    job = make_queue(settings, redis_conn).enqueue(process_meter_report, ["acme"], hour="garbage")

    lines = of_job(run_worker(settings), job.id)

    errors = [line for line in lines if line["level"] in WARNING_LEVELS]
    assert [(e["event"], e["logger"]) for e in errors] == [
        ("job.failed", "sensormeter.tasks.envelope"),
        (
            f"job {job.id}: exception raised while executing "
            "(sensormeter.tasks.report.process_meter_report)",
            "rq.worker",
        ),
    ]
    assert errors[0]["error_type"] == "ValueError"
    traceback = errors[1]["exception"]
    assert traceback.startswith("Traceback (most recent call last):")
    assert "ValueError: hour 'garbage' is not of the form" in traceback

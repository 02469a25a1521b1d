"""A quiet minute logs nothing at info level: the idle close check and sweep are debug lines.

The scheduler queues the period-close check every minute and the sweep every 10 minutes; with
nothing to do, neither they nor RQ's lines about them may write an info line.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import peewee
import pytest
import redis
from rq.registry import FinishedJobRegistry

from sensormeter.keys import close_checked_key
from sensormeter.logs import capture_logs
from sensormeter.runtime import Runtime
from sensormeter.settings import Settings
from sensormeter.tasks.envelope import run_job
from sensormeter.tasks.period_close import close_periods
from sensormeter.tasks.queue import make_queue
from sensormeter.tasks.recovery import sweep_stale_reports

from .conftest import SENSORMETER, cli_env
from .factories import make_org

# What a burst worker process writes at info whatever it did: the line that says it is done.
PROCESS_LINES = {("sensormeter.tasks.worker", "worker.burst_done")}


def idle_checks_through_a_worker(
    settings: Settings, connection: redis.Redis, level: str
) -> list[dict[str, Any]]:
    """Queue one close check and one sweep as the scheduler does; run a burst worker on them."""
    queue = make_queue(settings, connection)
    jobs = [queue.enqueue(close_periods), queue.enqueue(sweep_stale_reports)]
    done = subprocess.run(
        [*SENSORMETER, "worker", "--burst"],
        env=cli_env(settings, SENSORMETER_LOG_FORMAT="json", SENSORMETER_LOG_LEVEL=level),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # Both ran to the end: they are finished, and the close check recorded its time.
    finished = FinishedJobRegistry(queue=queue).get_job_ids()
    assert sorted(finished) == sorted(job.id for job in jobs)
    assert connection.get(close_checked_key(settings.queue_name)) is not None
    return [json.loads(line) for line in done.stderr.splitlines()]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # not about the database
def test_an_idle_close_check_and_sweep_write_no_info_line(
    settings: Settings, database: peewee.Database, redis_conn: redis.Redis
) -> None:
    """Through a real worker, an idle close check and sweep write nothing at info or above."""
    make_org("acme", active=3)  # billable, but no period ends soon and nothing is pending
    lines = idle_checks_through_a_worker(settings, redis_conn, "INFO")
    loud = [line for line in lines if (line["logger"], line["event"]) not in PROCESS_LINES]
    assert loud == []


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_idle_lines_are_still_there_at_debug(
    settings: Settings, database: peewee.Database, redis_conn: redis.Redis
) -> None:
    """At debug level the same run shows both jobs' lines and RQ's, all at debug."""
    lines = idle_checks_through_a_worker(settings, redis_conn, "DEBUG")
    completed = [line for line in lines if line["event"] == "job.completed"]
    assert sorted((line["job"], line["jobs"], line["level"]) for line in completed) == [
        ("close_periods", 0, "debug"),
        ("sweep_stale_reports", 0, "debug"),
    ]
    job_ok = [line for line in lines if line["logger"] == "rq.worker" and "Job OK" in line["event"]]
    assert [line["level"] for line in job_ok] == ["debug", "debug"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # not about the database
class TestRoutineJobLines:
    def test_a_check_that_found_work_logs_at_info(self, runtime: Runtime) -> None:
        """A routine check that queued something says so at info; idle, it is a debug line."""
        with capture_logs() as logs:
            run_job("close_periods", lambda run: {"jobs": 2}, idle=lambda found: not found["jobs"])
            run_job("close_periods", lambda run: {"jobs": 0}, idle=lambda found: not found["jobs"])
        assert [(e["event"], e["log_level"], e["jobs"]) for e in logs if "jobs" in e] == [
            ("job.completed", "info", 2),
            ("job.completed", "debug", 0),
        ]
        assert {e["log_level"] for e in logs if e["event"] == "job.started"} == {"debug"}

    def test_other_jobs_keep_their_info_lines(self, runtime: Runtime) -> None:
        """A job that is no routine check (no ``idle``) logs its start and end at info."""
        with capture_logs() as logs:
            run_job("catch_up", lambda run: {"jobs": 0})
        assert [(e["event"], e["log_level"]) for e in logs] == [
            ("job.started", "info"),
            ("job.completed", "info"),
        ]

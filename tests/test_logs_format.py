"""One format for every line of a sensormeter process: SENSORMETER_LOG_FORMAT, RQ's lines too."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import peewee
import pytest
import redis
import structlog

from sensormeter.errors import ConfigurationError
from sensormeter.logs import configure_logging, get_logger
from sensormeter.settings import Settings

from .conftest import SENSORMETER, cli_env

WORKER = "5e2b75cbae4b4875ab5a629a47f7fda9"


@pytest.fixture
def output() -> Iterator[io.StringIO]:
    """This process's logging goes to a string for the test; the set-up is undone after."""
    stream = io.StringIO()
    yield stream
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_sensormeter", False)]:
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)
    structlog.reset_defaults()


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


class TestTheVariable:
    @pytest.mark.parametrize("raw, value", [("json", "json"), ("Console", "console")])
    def test_json_and_console_are_read_in_any_case(self, raw: str, value: str) -> None:
        """SENSORMETER_LOG_FORMAT takes json or console, in any case."""
        assert Settings.from_env({"SENSORMETER_LOG_FORMAT": raw}).log_format == value

    def test_unset_means_choose_by_the_terminal(self) -> None:
        """Unset (or blank), the format is left to the stream: console on a terminal."""
        assert Settings.from_env({"SENSORMETER_LOG_FORMAT": " "}).log_format is None

    def test_another_value_is_refused_naming_the_variable(self) -> None:
        """A value other than json or console is one clear error naming the variable."""
        with pytest.raises(ConfigurationError) as caught:
            Settings.from_env({"SENSORMETER_LOG_FORMAT": "xml"})
        assert str(caught.value).startswith("SENSORMETER_LOG_FORMAT: 'xml' must be json or console")


class TestChoosingTheFormat:
    def test_json_is_one_object_per_line_with_level_logger_and_timestamp(
        self, output: io.StringIO
    ) -> None:
        """In JSON every line is an object naming its event, level, logger and time."""
        configure_logging("INFO", stream=output, log_format="json")
        get_logger("sensormeter.tasks.envelope").info("job.started", job="close_periods")
        [line] = json_lines(output)
        assert (line["event"], line["level"], line["logger"], line["job"]) == (
            "job.started",
            "info",
            "sensormeter.tasks.envelope",
            "close_periods",
        )
        assert line["timestamp"].endswith("Z")

    def test_console_is_asked_for_off_a_terminal_without_colour(
        self, output: io.StringIO
    ) -> None:
        """Asked for off a terminal, the console format has no colour codes and no JSON."""
        configure_logging("INFO", stream=output, log_format="console")
        get_logger("sensormeter.reporter").warning("job.retrying", error="APIError: down")
        text = output.getvalue()
        assert "job.retrying" in text and "[sensormeter.reporter]" in text
        assert "error='APIError: down'" in text
        assert "\x1b[" not in text and not text.startswith("{")

    def test_unset_is_console_on_a_terminal_and_json_elsewhere(self, output: io.StringIO) -> None:
        """Unset, a terminal gets the console format; a pipe or file gets JSON."""
        leader, follower = os.openpty()
        with os.fdopen(follower, "w") as terminal:
            configure_logging("INFO", stream=terminal)
            get_logger("sensormeter.t").info("on.a.terminal", a=1)
        on_terminal = os.read(leader, 65536).decode()
        os.close(leader)
        assert "on.a.terminal" in on_terminal and not on_terminal.lstrip().startswith("{")
        configure_logging("INFO", stream=output)
        get_logger("sensormeter.t").info("in.a.file", a=1)
        assert json_lines(output)[0]["event"] == "in.a.file"


class TestRecordsOfRQ:
    def test_rq_text_becomes_a_record_with_fields(self, output: io.StringIO) -> None:
        """RQ's "Worker <name>: ..." line is an event of its own with the worker as a field."""
        configure_logging("INFO", stream=output, log_format="json")
        logging.getLogger("rq.worker").info(
            "Worker %s: started with PID %d, version %s", WORKER, 4242, "2.12.0"
        )
        logging.getLogger("rq.job").info("Job %s: enqueued for retry, %s remaining", "j-1", 2)
        started, retry = json_lines(output)
        assert (started["event"], started["worker"], started["logger"], started["level"]) == (
            "started with PID 4242, version 2.12.0",
            WORKER,
            "rq.worker",
            "info",
        )
        assert (retry["event"], retry["job_id"]) == ("enqueued for retry, 2 remaining", "j-1")

    def test_a_traceback_in_rq_text_is_a_field_and_scrubbed(self, output: io.StringIO) -> None:
        """The traceback RQ puts in its message goes to ``exception``; the event is one line."""
        configure_logging("INFO", stream=output, log_format="json")
        traceback = (
            "Traceback (most recent call last):\n  File \"x.py\", line 1\n"
            "RuntimeError: cannot reach redis://:hunter2@cache:6379/0 with sk_live_abc123\n"
        )
        logging.getLogger("rq.worker").error(
            "Worker %s: job %s: exception raised while executing (%s)\n%s",
            WORKER,
            "j-2",
            "sensormeter.tasks.report.process_meter_report",
            traceback,
            extra={"job_id": "j-2", "queue": "meter-reporting", "arguments": ["a"] * 500},
        )
        [line] = json_lines(output)
        assert line["event"] == (
            "job j-2: exception raised while executing "
            "(sensormeter.tasks.report.process_meter_report)"
        )
        assert line["exception"].startswith("Traceback (most recent call last):")
        assert (line["job_id"], line["queue"], line["level"]) == ("j-2", "meter-reporting", "error")
        assert "arguments" not in line  # a chunk's ids are not repeated in the line
        assert "hunter2" not in output.getvalue() and "abc123" not in output.getvalue()

    def test_colour_codes_are_removed(self, output: io.StringIO) -> None:
        """rq colours parts of its text on a terminal; a record's event has no escape codes."""
        configure_logging("INFO", stream=output, log_format="json")
        logging.getLogger("rq.worker").info("*** Listening on %s...", "\x1b[32mqueue\x1b[39;49;00m")
        assert json_lines(output)[0]["event"] == "*** Listening on queue..."

    @pytest.mark.parametrize(
        "message, args",
        [
            ("Worker %s: %s: %s (%s)", (WORKER, "q", "Job OK", "j-3")),
            ("Worker %s: %s: %s (%s)", (WORKER, "q", "every minute: close", "j-3")),
            ("Successfully completed %s job in %ss on worker %s", ("close", "0:00:00.01", WORKER)),
            ("Worker %s: job %s result is kept for %s seconds", (WORKER, "j-3", 3600)),
            ("Worker %s: cleaning registries for queue: %s", (WORKER, "q")),
        ],
    )
    def test_rq_lines_about_each_job_are_debug_lines(
        self, output: io.StringIO, message: str, args: tuple[object, ...]
    ) -> None:
        """RQ's per-job info lines are written only at debug level (job.* lines say it all)."""
        configure_logging("INFO", stream=output, log_format="json")
        logging.getLogger("rq.worker").info(message, *args)
        assert output.getvalue() == ""
        configure_logging("DEBUG", stream=output, log_format="json")
        logging.getLogger("rq.worker").info(message, *args)
        [line] = json_lines(output)
        assert line["level"] == "debug"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # not about the database
def test_the_worker_command_writes_the_format_asked_for(
    settings: Settings, database: peewee.Database, redis_conn: redis.Redis
) -> None:
    """`sensormeter worker --burst` writes console lines when asked, JSON by default off a TTY."""
    lines = {}
    for log_format in ("console", ""):
        done = subprocess.run(
            [*SENSORMETER, "worker", "--burst"],
            env=cli_env(settings, SENSORMETER_LOG_FORMAT=log_format),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout == ""
        lines[log_format or "unset"] = done.stderr.splitlines()
    [console] = lines["console"]
    assert "worker.burst_done" in console and not console.startswith("{")
    [unset] = lines["unset"]
    assert json.loads(unset)["event"] == "worker.burst_done"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_bad_format_stops_the_command_naming_the_variable(settings: Settings) -> None:
    """A command refuses to start on a bad SENSORMETER_LOG_FORMAT, in one line naming it."""
    done = subprocess.run(
        [*SENSORMETER, "worker", "--burst"],
        env=cli_env(settings, SENSORMETER_LOG_FORMAT="yaml"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.startswith("error: SENSORMETER_LOG_FORMAT: 'yaml' must be json or console")

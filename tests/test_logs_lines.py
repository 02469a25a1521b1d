"""Log lines a machine can read: one JSON object per line, at most 4,096 bytes, one write each."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import peewee
import pytest
import redis
import structlog

from sensormeter.hours import format_hour, hour_start
from sensormeter.logs import (
    MAX_LINE_BYTES,
    BoundedJSONRenderer,
    configure_logging,
    fit_event,
    get_logger,
    write_line,
)
from sensormeter.meters import InMemoryMeterClient
from sensormeter.models import Organization, Sensor, Subscription, utcnow
from sensormeter.runtime import Runtime, set_runtime
from sensormeter.settings import Settings
from sensormeter.tasks.report import process_meter_report

RENDER = BoundedJSONRenderer()


def render(event: dict[str, Any]) -> bytes:
    """The bytes one line takes, newline included."""
    return (RENDER(None, "info", dict(event)) + "\n").encode()


@pytest.fixture
def json_log(tmp_path: Path) -> Iterator[Path]:
    """This process logs JSON to a file for the test; the logging set-up is undone after."""
    path = tmp_path / "log.jsonl"
    with path.open("w") as stream:
        configure_logging("INFO", stream=stream, log_format="json")
        try:
            yield path
        finally:
            root = logging.getLogger()
            for handler in [h for h in root.handlers if getattr(h, "_sensormeter", False)]:
                root.removeHandler(handler)
            structlog.reset_defaults()


def read_lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


class TestBoundedRenderer:
    def test_short_event_is_rendered_as_is(self) -> None:
        """An event that fits is plain JSON, with no truncation mark."""
        event = {"event": "report", "organization_id": "acme", "value": 3}
        assert json.loads(render(event)) == event

    def test_oversized_event_is_shrunk_to_valid_json(self) -> None:
        """An oversized event becomes valid JSON of at most 4,096 bytes, marked truncated."""
        event = {
            "event": "job.failed",
            "level": "error",
            "values": {f"org{i:04d}": i for i in range(800)},
            "exception": "Traceback (most recent call last):\n" + "  frame\n" * 2000 + "E: boom",
            "message": 'quotes " and \\ and é and \U0001f600 ' * 300,
            "job_id": "hourly-1",
        }
        line = render(event)
        assert len(line) <= MAX_LINE_BYTES
        shrunk = json.loads(line)
        assert shrunk["truncated"] is True
        assert (shrunk["event"], shrunk["level"], shrunk["job_id"]) == (
            "job.failed",
            "error",
            "hourly-1",
        )
        # A cut field keeps its head and its tail: the exception's last line survives.
        assert shrunk["exception"].startswith("Traceback (most recent call last):")
        assert shrunk["exception"].endswith("E: boom")
        assert "chars cut]" in shrunk["values"]

    def test_huge_message_of_a_stdlib_record_is_cut(self) -> None:
        """A 100 KB event text (RQ logs tracebacks in its message) is cut to fit."""
        line = render({"event": "x" * 100_000, "level": "error", "logger": "rq.worker"})
        assert len(line) <= MAX_LINE_BYTES
        assert json.loads(line)["logger"] == "rq.worker"

    def test_too_many_fields_are_dropped_and_named(self) -> None:
        """Fields that cannot keep 32 characters each are dropped, and the line says which."""
        event = {"event": "many", **{f"field{i}": "v" * 100 for i in range(100)}}
        shrunk = json.loads(render(event))
        assert shrunk["truncated"] is True and shrunk["dropped"]
        assert set(shrunk) | set(shrunk["dropped"]) == set(event) | {"truncated", "dropped"}

    def test_thousands_of_fields_still_fit(self) -> None:
        """Even an event of 5,000 fields renders within the limit, keeping its name."""
        event = {"event": "wide", "level": "info", **{f"k{i}": i for i in range(5000)}}
        line = render(event)
        assert len(line) <= MAX_LINE_BYTES
        assert json.loads(line)["event"] == "wide"

    def test_fit_event_respects_any_limit(self) -> None:
        """fit_event meets smaller limits too, without changing the event it was given."""
        event = {"event": "job.completed", "data": list(range(3000)), "text": "é" * 2000}
        copy = dict(event)
        for limit in (300, 1000, 2500):
            fitted = fit_event(event, RENDER.render, limit)
            assert len(RENDER.render(fitted).encode()) <= limit
        assert event == copy


class TestOneWritePerLine:
    def test_line_and_newline_go_out_in_one_write(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A line and its newline leave in a single os.write, after the stream's buffer."""
        read_end, write_end = os.pipe()
        calls: list[bytes] = []
        real_write = os.write

        def recording_write(fd: int, data: bytes) -> int:
            calls.append(bytes(data))
            return real_write(fd, data)

        with os.fdopen(write_end, "w") as stream:
            stream.write("buffered before\n")  # still in Python's buffer
            monkeypatch.setattr(os, "write", recording_write)
            write_line(stream, '{"event": "one"}')
            monkeypatch.undo()
        with os.fdopen(read_end, "rb") as reader:
            assert reader.read() == b'buffered before\n{"event": "one"}\n'
        assert calls[-1] == b'{"event": "one"}\n'

    def test_stream_without_a_descriptor_gets_one_write(self) -> None:
        """A stream with no file descriptor (a StringIO) still gets the whole line at once."""
        stream = io.StringIO()
        write_line(stream, "line")
        assert stream.getvalue() == "line\n"

    def test_rq_records_are_bounded_single_lines(self, json_log: Path) -> None:
        """A standard-library record (RQ's own) is one JSON line within 4,096 bytes too."""
        logging.getLogger("rq.worker").error("job failed:\n%s", "Traceback\n" * 2000)
        get_logger("sensormeter.t").info("after", items=list(range(5000)))
        lines = read_lines(json_log)
        assert len(lines) == 2
        for line in lines:
            assert len(line) <= MAX_LINE_BYTES and line.endswith(b"\n")
            assert json.loads(line)["truncated"] is True
        assert json.loads(lines[0])["logger"] == "rq.worker"


WRITER = textwrap.dedent(
    """
    import logging, sys
    import structlog
    from sensormeter.logs import configure_logging

    configure_logging("INFO", log_format="json")  # stderr: the pipe shared with the other
    name = sys.argv[1]
    log = structlog.get_logger("writer")  # structlog's global configuration: the same output
    for i in range(int(sys.argv[2])):
        log.info("job.completed", writer=name, i=i, payload=name * (2000 + 37 * (i % 150)))
        logging.getLogger("rq.worker").info("%s %d %s", name, i, name * (3000 + 53 * (i % 90)))
    """
)


def test_two_processes_sharing_a_pipe_never_interleave_lines() -> None:
    """Two processes writing many long lines to one pipe produce only whole JSON lines."""
    count = 400
    read_end, write_end = os.pipe()
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, name, str(count)],
            stdout=subprocess.DEVNULL,
            stderr=write_end,
        )
        for name in ("a", "b")
    ]
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        output = reader.read()
    assert [w.wait(timeout=60) for w in writers] == [0, 0]
    lines = output.splitlines(keepends=True)
    assert len(lines) == 2 * 2 * count
    parsed = [json.loads(line) for line in lines]  # a line cut by the other writer fails here
    assert max(len(line) for line in lines) <= MAX_LINE_BYTES
    assert sum(1 for p in parsed if p["event"] == "job.completed") == 2 * count


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # not about the database
def test_job_line_of_a_500_organization_chunk_fits_without_truncation(
    settings: Settings, database: peewee.Database, redis_conn: redis.Redis, json_log: Path
) -> None:
    """A 500-organization chunk's job.completed line is one JSON line of at most 4,096 bytes."""
    orgs = [f"organization-{i:04d}" for i in range(500)]
    Organization.insert_many([(o, o) for o in orgs], fields=["id", "name"]).execute()
    Subscription.insert_many(
        [(o, "active", f"cus_{o}") for o in orgs],
        fields=[Subscription.organization, Subscription.status, Subscription.stripe_customer_id],
    ).execute()
    Sensor.insert_many(
        [(o, True, None) for o in orgs for _ in range(1 + orgs.index(o) % 3)],
        fields=[Sensor.organization, Sensor.is_active, Sensor.deleted_at],
    ).execute()
    runtime = Runtime.build(settings, meter=InMemoryMeterClient())
    set_runtime(runtime)
    try:
        process_meter_report(orgs, hour=format_hour(hour_start(utcnow())))
    finally:
        set_runtime(None)
        runtime.close()
    [line] = [x for x in read_lines(json_log) if b'"job.completed"' in x]
    assert len(line) <= MAX_LINE_BYTES
    job = json.loads(line)
    assert "truncated" not in job  # it fits on its own, not by being cut
    assert job["organizations"] == 500
    assert job["examples"] == orgs[:5]
    assert job["total_value"] == sum(1 + i % 3 for i in range(500))
    assert job["outcomes"] == {"sent": 500}
    assert (job["skipped"], job["unsettled_examples"], job["error"]) == (0, [], None)

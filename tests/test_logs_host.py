"""Imported into a host app, sensormeter logs through the standard ``logging`` module.

The host's handlers receive sensormeter's records, scrubbed of secrets; nothing is printed
to stdout, and neither structlog nor the root logger is configured by sensormeter.
"""

from __future__ import annotations

import json
import logging
import pickle
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest
import structlog

from sensormeter.emulator import StripeEmulator
from sensormeter.errors import ReportsFailed
from sensormeter.hours import format_hour, hour_start
from sensormeter.logs import EventMessage
from sensormeter.models import utcnow
from sensormeter.runtime import Runtime
from sensormeter.tasks.report import process_meter_report

from .factories import make_org

STRIPE_KEY = "sk_live_51HostLogSecret0000wxyz"
PASSWORD = "host-db-s3cret"
LEAKY = f"upstream said {STRIPE_KEY} via postgresql://billing:{PASSWORD}@db.internal/app"


class HostHandler(logging.Handler):
    """What a host app attaches: it keeps the records and formats them its own way."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def host() -> Iterator[HostHandler]:
    """A host's logging: its handler on the "sensormeter" logger, nothing else set up."""
    root = logging.getLogger()
    # In-process CLI tests (click's runner) may have run configure_logging: a host has not.
    for old in [h for h in root.handlers if getattr(h, "_sensormeter", False)]:
        root.removeHandler(old)
    structlog.reset_defaults()
    handler = HostHandler()
    logger = logging.getLogger("sensormeter")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(logging.NOTSET)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # not about the database
def test_a_host_handler_receives_scrubbed_records_and_stdout_stays_empty(
    runtime: Runtime,
    emulator: StripeEmulator,
    host: HostHandler,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """A report run through the package API reaches the host's handler as scrubbed records."""
    make_org("acme", active=3)
    emulator.inject(503, message=LEAKY)
    with pytest.raises(ReportsFailed):  # outside RQ the first attempt is the last
        process_meter_report(["acme"], hour=format_hour(hour_start(utcnow())))

    records = host.records
    assert [(r.getMessage().split(" ")[0], r.levelname) for r in records] == [
        ("job.started", "INFO"),
        ("report", "INFO"),
        ("job.failed", "WARNING"),
    ]
    assert all(r.name.startswith("sensormeter.") for r in records)
    report = records[1]
    assert report.name == "sensormeter.reporter"
    # The message is the whole line, for a plain %(message)s formatter ...
    text = host.format(report)
    assert text.startswith("INFO sensormeter.reporter report organization_id=acme value=3 ")
    assert "outcome=retryable" in text and "sk_live_***" in text
    # ... and the fields are attributes, for a JSON formatter.
    fields = vars(report)
    assert (fields["organization_id"], fields["value"], fields["status"]) == ("acme", 3, "failed")
    assert fields["error"].startswith("APIError: upstream said sk_live_***")
    for record in records:
        everything = host.format(record) + json.dumps(record.__dict__, default=str)
        assert STRIPE_KEY not in everything and PASSWORD not in everything
        assert "51HostLogSecret" not in everything
    # Nothing printed, and nothing configured behind the host's back.
    captured = capfd.readouterr()
    assert captured.out == ""
    assert not structlog.is_configured()
    assert not any(getattr(h, "_sensormeter", False) for h in logging.getLogger().handlers)


def test_a_record_survives_a_handler_that_pickles_it() -> None:
    """A record's message pickles with its fields (a host may ship records to a queue)."""
    message = EventMessage({"organization_id": "acme", "value": 3, "event": "report"})
    again = pickle.loads(pickle.dumps(message))
    assert str(again) == str(message) == "report organization_id=acme value=3"
    assert again.event_dict == message.event_dict


HOST = textwrap.dedent(
    """
    import logging, sys
    import structlog

    import sensormeter
    from sensormeter.logs import get_logger
    from sensormeter.tasks import envelope, report, worker  # every module with a logger
    from sensormeter import webhook, reporter

    assert not structlog.is_configured(), "structlog configured at import"
    assert logging.getLogger().handlers == [], "a root handler added at import"
    # A host that set up no logging at all: sensormeter's warnings print nothing anywhere.
    get_logger("sensormeter.webhook").warning("webhook.meter_error", identifier="x")
    get_logger("sensormeter.tasks.envelope").error("job.failed", error="boom")
    # A host that sets up logging afterwards receives them, on stderr here.
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(name)s|%(message)s")
    get_logger("sensormeter.reporter").info("report", organization_id="acme", value=3)
    """
)


def test_importing_sensormeter_configures_nothing_and_prints_nothing() -> None:
    """In a fresh host process, importing and logging configure nothing and print nothing."""
    done = subprocess.run(
        [sys.executable, "-c", HOST], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert done.stderr == "sensormeter.reporter|report organization_id=acme value=3\n"

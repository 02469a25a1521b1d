"""Logging of sensormeter's own processes (worker, scheduler, commands), set up at start.

Every line, sensormeter's and other libraries' (RQ, rq-scheduler, peewee, a host's usage
source), is one record in one format on stderr: JSON (at most :data:`MAX_LINE_BYTES` bytes,
one write) or the console format, chosen by ``SENSORMETER_LOG_FORMAT``; unset, the console
format on a terminal and JSON elsewhere.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from datetime import UTC, datetime
from typing import Any, TextIO

import structlog

from .foreign import QuietChatter, shape_foreign
from .lines import BoundedJSONRenderer, LineHandler
from .logger import EventMessage
from .scrub import scrub_secrets

FORMATS = ("json", "console")


def wants_json(stream: TextIO, log_format: str | None) -> bool:
    """True for JSON lines: asked for, or, when nothing is asked, ``stream`` is no terminal."""
    if log_format is not None:
        return log_format == "json"
    isatty = getattr(stream, "isatty", None)
    return not (isatty is not None and isatty())


def record_time(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """ProcessorFormatter pre-chain step: ``timestamp``, when the record was made (UTC, ISO)."""
    event_dict["timestamp"] = _iso(event_dict["_record"].created)
    return event_dict


def _iso(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LineFormatter(structlog.stdlib.ProcessorFormatter):
    """The formatter of every record of the process: sensormeter's, RQ's, anyone's.

    A sensormeter record (its message an :class:`EventMessage`) is rendered from its fields,
    scrubbed already; any other goes through structlog's ProcessorFormatter: made a record
    with fields (logs/foreign.py), then scrubbed.
    """

    def __init__(self, as_json: bool, colors: bool = False) -> None:
        self.renderer: Any = (
            BoundedJSONRenderer() if as_json else structlog.dev.ConsoleRenderer(colors=colors)
        )
        super().__init__(
            foreign_pre_chain=[
                shape_foreign,
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                record_time,
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                scrub_secrets,
                self.renderer,
            ],
            pass_foreign_args=True,  # shape_foreign reads RQ's arguments
        )

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line (or, in the console format, a traceback under it)."""
        message = record.msg
        if not isinstance(message, EventMessage):
            return str(super().format(record))
        method = record.levelname.lower()
        event_dict = {
            **message.event_dict,
            "level": method,
            "logger": record.name,
            "timestamp": _iso(record.created),
        }
        return str(self.renderer(None, method, event_dict))


def configure_logging(
    level: str = "INFO", stream: TextIO | None = None, log_format: str | None = None
) -> None:
    """Send every record of this process to ``stream`` (stderr) in one format, at ``level``.

    Only the ``sensormeter`` command calls it, once at start; a host app keeps its own set-up.
    ``log_format`` is ``json``, ``console`` or None (console on a terminal, JSON elsewhere).
    """
    if log_format is not None and log_format not in FORMATS:
        raise ValueError(f"log format {log_format!r} must be json or console")
    stream = stream or sys.stderr
    as_json = wants_json(stream, log_format)
    # On a terminal a person reads the console format (tracebacks over several lines);
    # elsewhere a machine reads one bounded JSON object per line, or asked-for console lines
    # without colour codes.
    colors = not as_json and not wants_json(stream, None)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_sensormeter", False)]:
        root.removeHandler(old)
    handler = LineHandler(stream)
    handler.setFormatter(LineFormatter(as_json, colors))
    handler.addFilter(QuietChatter(logging.getLevelNamesMapping()[level]))
    handler._sensormeter = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    # stripe-python logs every request at INFO; our own "report" line already says what matters.
    logging.getLogger("stripe").setLevel(max(logging.WARNING, root.level))
    # Code of this process that logs through structlog's global configuration (a host's
    # usage source, say) goes the same way; sensormeter's own loggers do not need it.
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.filter_by_level,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )

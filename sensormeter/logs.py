"""structlog set-up for sensormeter's processes: done once, at process start, by the CLI."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

# Stripe keys, webhook signing secrets and the password part of URLs (redis://:pw@host,
# postgresql://u:pw@host).
_SECRET_PATTERNS = [
    (re.compile(r"\b(sk|rk|pk)_(live|test)_[A-Za-z0-9_]+"), r"\1_\2_***"),
    (re.compile(r"\bwhsec_[A-Za-z0-9_]+"), "whsec_***"),
    (
        re.compile(r"(?P<scheme>[a-z][a-z0-9+.\-]*://)(?P<user>[^:/@\s]*):[^@/\s]+@"),
        r"\g<scheme>\g<user>:***@",
    ),
]


def scrub(text: str) -> str:
    """Remove Stripe keys, webhook secrets and URL passwords from a string."""
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: _scrub_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub_value(v) for v in value]
    return value


def scrub_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: scrub every string value of the event."""
    for key, value in list(event_dict.items()):
        event_dict[key] = _scrub_value(value)
    return event_dict


def configure_logging(
    level: str = "INFO", stream: TextIO | None = None, json: bool | None = None
) -> None:
    """Configure structlog (JSON when not on a terminal) and stdlib logging for this process."""
    stream = stream or sys.stderr
    as_json = (not stream.isatty()) if json is None else json
    renderer: Any = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            scrub_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level]),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    # Records from the standard library (RQ, rq-scheduler, peewee) go through the same
    # scrubbing and renderer, so a worker's stderr is all JSON off a terminal.
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            scrub_secrets,
            renderer,
        ],
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_sensormeter", False)]:
        root.removeHandler(old)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler._sensormeter = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    # stripe-python logs every request at INFO; our own "report" line already says what matters.
    logging.getLogger("stripe").setLevel(max(logging.WARNING, root.level))

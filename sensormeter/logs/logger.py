"""How sensormeter's modules log: structlog's API in front, the standard ``logging`` behind.

Every module takes its logger from :func:`get_logger` (``sensormeter.<part>``). Nothing is
configured globally, at import or later: the logger carries its own processors (structlog's
global configuration belongs to the host), and each line becomes one standard-library record
on the logger of the same name, its secrets scrubbed. So in a host app the host's handlers
receive sensormeter's records like their own; in sensormeter's processes the handler that
``configure_logging`` installs renders them as JSON or console lines.

A record's message is the whole line as text (``report organization_id=acme value=3 ...``),
for a plain ``%(message)s`` formatter; its fields are also attributes of the record, for a
JSON formatter (a field named like a LogRecord attribute, e.g. ``message``, is only in the text).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

import structlog

from .scrub import scrub_secrets

ROOT = "sensormeter"  # every sensormeter logger is this one or a child of it
EXAMPLES = 5  # ids a job line names as examples instead of listing every organization
# What a record holds already: an extra field of one of these names would make logging raise.
_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

# A library adds no handler but a NullHandler (the logging HOWTO's advice): a host that set up
# no logging gets no sensormeter output from Python's last-resort handler either.
logging.getLogger(ROOT).addHandler(logging.NullHandler())


def examples(ids: Iterable[str], limit: int = EXAMPLES) -> list[str]:
    """The first ``limit`` ids: what a log line names instead of a whole list."""
    return [i for _, i in zip(range(limit), ids, strict=False)]


class EventMessage:
    """A record's message: the event's fields, made text only when a formatter asks.

    ``logging`` takes any object with ``__str__`` as a message. A host's formatter gets the
    whole line as text; the formatter of sensormeter's processes renders the fields
    (logs/process.py), and never pays for the text.
    """

    __slots__ = ("event_dict", "_text")

    def __init__(self, event_dict: dict[str, Any]) -> None:
        self.event_dict = event_dict
        self._text: str | None = None

    def __str__(self) -> str:
        """The line as text (made once)."""
        if self._text is None:
            self._text = as_text(self.event_dict)
        return self._text

    def __repr__(self) -> str:
        return repr(str(self))

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle the fields (a handler may ship records to another process)."""
        return (EventMessage, (self.event_dict,))


def _logfmt(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if text and not any(c in text for c in ' ="\\\n\t'):
        return text
    return json.dumps(text)


def as_text(event_dict: MutableMapping[str, Any]) -> str:
    """The event as one line of text: its name, ``key=value`` pairs, then any traceback."""
    fields = " ".join(
        f"{key}={_logfmt(value)}"
        for key, value in event_dict.items()
        if key not in ("event", "exception")
    )
    text = " ".join(part for part in (str(event_dict.get("event", "")), fields) if part)
    exception = event_dict.get("exception")
    return f"{text}\n{exception}" if exception else text


def to_record(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """structlog processor, the last: the arguments of the standard-library logging call."""
    fields = dict(event_dict)
    extra = {key: value for key, value in fields.items() if key not in _RESERVED}
    return (EventMessage(fields),), {"extra": extra}


PROCESSORS: list[Any] = [
    structlog.stdlib.filter_by_level,  # nothing is built for a level the logger drops
    structlog.contextvars.merge_contextvars,  # a host's bound context (a request id)
    structlog.processors.format_exc_info,  # a traceback as text, so that it is scrubbed too
    scrub_secrets,
    to_record,
]


def get_logger(name: str = ROOT) -> structlog.stdlib.BoundLogger:
    """The logger of ``name`` (``sensormeter`` or a child): structlog's API, stdlib records."""
    return structlog.stdlib.BoundLogger(logging.getLogger(name), processors=PROCESSORS, context={})


class _Collector(logging.Handler):
    def __init__(self, entries: list[dict[str, Any]]) -> None:
        super().__init__(logging.DEBUG)
        self.entries = entries

    def emit(self, record: logging.LogRecord) -> None:
        message = record.msg
        fields = (
            dict(message.event_dict)
            if isinstance(message, EventMessage)
            else {"event": record.getMessage()}
        )
        self.entries.append({**fields, "log_level": record.levelname.lower()})


@contextmanager
def capture_logs(level: int = logging.DEBUG) -> Iterator[list[dict[str, Any]]]:
    """Collect what sensormeter logs inside the block: each line's fields and ``log_level``.

    The entries have the shape of ``structlog.testing.capture_logs``'s, which does not see
    sensormeter's lines (they do not use structlog's global configuration).
    """
    entries: list[dict[str, Any]] = []
    handler = _Collector(entries)
    logger = logging.getLogger(ROOT)
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield entries
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)

"""structlog set-up for sensormeter's processes: done once, at process start, by the CLI.

Off a terminal every line is one JSON object of at most :data:`MAX_LINE_BYTES` bytes (the
newline included), written with a single ``write`` call. Worker processes share one stderr
pipe, and Linux writes at most ``PIPE_BUF`` (4,096) bytes to a pipe in one piece: a line that
is longer, or written in two calls, can be cut by another process's line.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any, TextIO

import structlog

# Stripe keys, webhook signing secrets and the password part of URLs (redis://:pw@host,
# postgresql://u:pw@host).
_SECRET_PATTERNS = [
    (re.compile(r"\b(sk|rk|pk)_(live|test)_[A-Za-z0-9_]+"), r"\1_\2_***"),
    (re.compile(r"\bwhsec_[A-Za-z0-9_]+"), "whsec_***"),
    (
        # The look-behind starts a scheme only where a word starts: without it, a long run
        # of letters (a blob in a traceback) costs quadratic time, tried from every letter.
        re.compile(
            r"(?<![a-z0-9+.\-])(?P<scheme>[a-z][a-z0-9+.\-]*://)(?P<user>[^:/@\s]*):[^@/\s]+@"
        ),
        r"\g<scheme>\g<user>:***@",
    ),
]

MAX_LINE_BYTES = 4096  # PIPE_BUF on Linux: the most one write to a pipe keeps in one piece.
EXAMPLES = 5  # ids a job line names as examples instead of listing every organization
# Fields shrunk only when nothing else is left to shrink: they say what the line is.
_ESSENTIAL = ("event", "level", "timestamp", "logger")
_MIN_KEPT_CHARS = 32  # a field cut shorter than this is dropped instead
_MIN_FIELD_BYTES = _MIN_KEPT_CHARS + 48  # with its name, quotes and the cut marker
_MAX_ROUNDS = 50


def scrub(text: str) -> str:
    """Remove Stripe keys, webhook secrets and URL passwords from a string."""
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def examples(ids: Iterable[str], limit: int = EXAMPLES) -> list[str]:
    """The first ``limit`` ids: what a log line names instead of a whole list."""
    return [i for _, i in zip(range(limit), ids, strict=False)]


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


def write_line(stream: TextIO, line: str) -> None:
    """Write ``line`` and a newline to ``stream`` with one ``os.write`` (never two pieces)."""
    text = line + "\n"
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        # No file descriptor (a StringIO, pytest's capture): one write call is all there is.
        stream.write(text)
        stream.flush()
        return
    # Whatever the stream still buffers was written before this line: it goes out first.
    stream.flush()
    data = text.encode(getattr(stream, "encoding", None) or "utf-8", "backslashreplace")
    while data:  # a blocking write of at most PIPE_BUF bytes is complete in one call
        data = data[os.write(fd, data) :]


class LineLogger:
    """A structlog logger that writes each rendered line with a single write call."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def msg(self, message: str) -> None:
        """Write one rendered line."""
        write_line(self._stream, message)

    log = debug = info = warn = warning = err = error = critical = exception = fatal = msg


class LineLoggerFactory:
    """structlog logger factory: every logger writes to ``stream`` through :class:`LineLogger`."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def __call__(self, *_args: Any) -> LineLogger:
        """A logger for the stream (structlog passes the logger name, unused)."""
        return LineLogger(self._stream)


class LineHandler(logging.Handler):
    """A stdlib handler that writes each formatted record with a single write call."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        """Format the record and write it as one line."""
        try:
            write_line(self.stream, self.format(record))
        except Exception:  # noqa: BLE001 (logging's contract: report, never raise)
            self.handleError(record)


def _size(text: str) -> int:
    return len(text.encode("utf-8"))


def _cut(text: str, keep: int) -> str:
    """``text`` cut to ``keep`` characters, its head and its tail, with a marker between."""
    head = (keep + 1) // 2
    tail = keep - head
    return f"{text[:head]}...[{len(text) - keep} chars cut]...{text[len(text) - tail :]}"


def _cap(sizes: list[int], budget: int) -> int:
    """The largest C with sum(min(size, C)) <= budget: every field above C is cut to C."""
    prefix = 0
    ordered = sorted(sizes)
    for i, size in enumerate(ordered):
        if prefix + size * (len(ordered) - i) > budget:
            return (budget - prefix) // (len(ordered) - i)
        prefix += size
    return ordered[-1] if ordered else 0


def fit_event(
    event_dict: dict[str, Any], render: Callable[[dict[str, Any]], str], limit: int
) -> dict[str, Any]:
    """A copy of the event, marked ``truncated``, that renders within ``limit`` bytes.

    The largest fields are cut to a common size (a string keeps its head and tail; a list or
    an object becomes its JSON text, cut the same way) until the line fits. A field other
    than ``event``, ``level``, ``timestamp`` and ``logger`` that would keep fewer than 32
    characters is dropped instead and named in ``dropped``.
    """
    event = dict(event_dict)
    event["truncated"] = True
    texts: dict[str, tuple[str, float]] = {}  # each cut field's full text, escaped bytes/char
    kept: dict[str, int] = {}  # characters each cut field keeps now
    done = {"truncated", "dropped"}
    for _ in range(_MAX_ROUNDS):
        size = _size(render(event))
        if size <= limit:
            return event
        sizes = {k: _size(render({k: v})) for k, v in event.items() if k not in done}
        if not sizes:
            break
        budget = limit - (size - sum(sizes.values()))
        cap = _cap(list(sizes.values()), budget)
        # Too many fields to keep even a few characters of each: drop the largest first.
        droppable = sorted((k for k in sizes if k not in _ESSENTIAL), key=lambda k: -sizes[k])
        while cap < _MIN_FIELD_BYTES and droppable:
            key = droppable.pop(0)
            del event[key], sizes[key]
            event["dropped"] = [*event.get("dropped", []), key]
            budget -= len(key) + 4
            cap = _cap(list(sizes.values()), budget)
        for key in sorted(k for k in sizes if sizes[k] > cap):
            if key not in texts:
                value = event[key]
                text = value if isinstance(value, str) else json.dumps(value, default=str)
                texts[key] = (text, max(1.0, (_size(json.dumps(text)) - 2) / max(len(text), 1)))
            text, ratio = texts[key]
            keep = int((cap - len(key) - 40) / ratio)
            # Estimates can be off by a few escapes: each round must cut deeper than the last.
            keep = min(keep, kept.get(key, len(text)) * 9 // 10)
            if keep >= _MIN_KEPT_CHARS:
                event[key] = _cut(text, keep)
                kept[key] = keep
            elif key in _ESSENTIAL:
                event[key] = _cut(text, _MIN_KEPT_CHARS) if len(text) > _MIN_KEPT_CHARS else text
                done.add(key)
            else:
                del event[key]
                event["dropped"] = [*event.get("dropped", []), key]
    # Still too long (thousands of small fields): say what the line was, and that it was cut.
    essential = {k: event_dict[k] for k in _ESSENTIAL if k in event_dict}
    return {
        **{
            k: _cut(str(v), _MIN_KEPT_CHARS) if len(str(v)) > 2 * _MIN_KEPT_CHARS else v
            for k, v in essential.items()
        },
        "truncated": True,
        "dropped_count": len(event_dict) - len(essential),
    }


class BoundedJSONRenderer:
    """structlog renderer: one JSON object per line, shrunk to fit :data:`MAX_LINE_BYTES`."""

    def __init__(self, limit: int = MAX_LINE_BYTES - 1) -> None:  # the newline is one byte
        self.limit = limit
        self._json = structlog.processors.JSONRenderer()

    def render(self, event_dict: dict[str, Any]) -> str:
        """The event as one JSON line, without the size guard."""
        return str(self._json(None, "", event_dict))

    def __call__(self, _logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> str:
        """Render the event; when too long, render the shrunk copy from :func:`fit_event`."""
        line = self.render(dict(event_dict))
        if _size(line) <= self.limit:
            return line
        return self.render(fit_event(dict(event_dict), self.render, self.limit))


def configure_logging(
    level: str = "INFO", stream: TextIO | None = None, json: bool | None = None
) -> None:
    """Configure structlog (JSON when not on a terminal) and stdlib logging for this process."""
    stream = stream or sys.stderr
    as_json = (not stream.isatty()) if json is None else json
    # On a terminal a person reads the console format (tracebacks over several lines);
    # elsewhere a machine reads one bounded JSON object per line.
    renderer: Any = BoundedJSONRenderer() if as_json else structlog.dev.ConsoleRenderer()
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
        logger_factory=LineLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    # Records from the standard library (RQ, rq-scheduler, peewee) go through the same
    # scrubbing, renderer and single-write output, so a worker's stderr is all JSON lines
    # off a terminal.
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
    handler = LineHandler(stream)
    handler.setFormatter(formatter)
    handler._sensormeter = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    # stripe-python logs every request at INFO; our own "report" line already says what matters.
    logging.getLogger("stripe").setLevel(max(logging.WARNING, root.level))

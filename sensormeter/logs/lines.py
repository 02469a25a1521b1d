"""Lines that survive a shared pipe: at most :data:`MAX_LINE_BYTES` bytes, one write each.

Worker processes share one stderr pipe, and Linux writes at most ``PIPE_BUF`` (4,096) bytes
to a pipe in one piece: a line that is longer, or written in two calls, can be cut by another
process's line. So every line is written with a single ``os.write``, and a JSON line that
would be longer is shrunk to fit (:func:`fit_event`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, MutableMapping
from typing import Any, TextIO

import structlog

MAX_LINE_BYTES = 4096  # PIPE_BUF on Linux: the most one write to a pipe keeps in one piece.
# Fields shrunk only when nothing else is left to shrink: they say what the line is.
_ESSENTIAL = ("event", "level", "timestamp", "logger")
_MIN_KEPT_CHARS = 32  # a field cut shorter than this is dropped instead
_MIN_FIELD_BYTES = _MIN_KEPT_CHARS + 48  # with its name, quotes and the cut marker
_MAX_ROUNDS = 50


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

"""Logging: sensormeter's loggers, secret scrubbing, and the set-up of its own processes.

- :func:`get_logger` (logs/logger.py): what every module logs with; standard-library records
  under ``sensormeter.*``, so a host app's handlers receive them. Nothing global is configured.
- :func:`scrub` (logs/scrub.py): secrets out of any text.
- :func:`configure_logging` (logs/process.py): the ``sensormeter`` command's one-time set-up,
  JSON or console lines on stderr, RQ's lines included (logs/foreign.py), each line bounded
  and written at once (logs/lines.py).
"""

from .foreign import BURST_ROUNDS, CHATTER, QuietChatter, shape_foreign
from .lines import MAX_LINE_BYTES, BoundedJSONRenderer, LineHandler, fit_event, write_line
from .logger import EXAMPLES, ROOT, EventMessage, capture_logs, examples, get_logger
from .process import FORMATS, LineFormatter, configure_logging, wants_json
from .scrub import scrub, scrub_secrets, scrub_value

__all__ = [
    "BURST_ROUNDS",
    "CHATTER",
    "EXAMPLES",
    "FORMATS",
    "MAX_LINE_BYTES",
    "ROOT",
    "BoundedJSONRenderer",
    "EventMessage",
    "LineFormatter",
    "LineHandler",
    "QuietChatter",
    "capture_logs",
    "configure_logging",
    "examples",
    "fit_event",
    "get_logger",
    "scrub",
    "scrub_secrets",
    "scrub_value",
    "shape_foreign",
    "wants_json",
    "write_line",
]

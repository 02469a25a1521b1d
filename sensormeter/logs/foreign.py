"""Other libraries' records in sensormeter's processes: RQ's free text made into records.

RQ and rq-scheduler log text such as ``Worker 5e2b...: meter-reporting: Job OK (job-id)``,
coloured on a terminal, with a job's traceback inside the message. Here such a record becomes
a one-line ``event`` with fields (``worker``, ``job_id``, ``queue``, ``exception``), and RQ's
lines about each job, which say again what sensormeter's own ``job.*`` lines say, are moved
to the debug level.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, MutableMapping
from typing import Any

_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # rq colours its lines when stdout is a terminal
# A message that starts with one of these formats has its first argument as a field.
_PREFIXES = (("Worker %s: ", "worker"), ("Job %s: ", "job_id"))
# The fields rq adds to a job's exception record ("arguments" and "kwargs" are left out: a
# chunk's 500 organization ids).
_RQ_EXTRAS = ("job_id", "queue", "func")
_TRACEBACK = "Traceback (most recent call last)"

# RQ's info lines about each job (rq 2.x message formats): taken, done, "Job OK", how long
# its result is kept; and the worker's periodic housekeeping. Every sensormeter job writes
# job.started and job.completed (or job.retrying / job.failed) itself.
CHATTER = {
    "rq.worker": frozenset(
        {
            "Worker %s: %s: %s (%s)",  # a job taken (with its description), and "Job OK"
            "Worker %s: %s: %s",  # a job taken (without its description)
            "Successfully completed %s job in %ss on worker %s",
            "Successfully completed job %s in %ss on worker %s",
            "Worker %s: job %s result is kept for %s seconds",
            "Worker %s: job %s result discarded immediately",
            "Worker %s: cleaning registries for queue: %s",
            "Worker %s: subscribing to channel %s",
            "Worker %s: unsubscribing from channel %s",
        }
    ),
}

# The lines of each round of a burst worker (sensormeter's --burst runs rq's burst mode in a
# loop until retries are done too): its start and its stop.
BURST_ROUNDS = {
    "rq.worker": frozenset(
        {
            "Worker %s: started with PID %d, version %s",
            "*** Listening on %s...",
            "Worker %s: done, quitting",
        }
    ),
}


def shape_foreign(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """ProcessorFormatter pre-chain step: another library's record as a one-line event.

    Needs ``pass_foreign_args=True`` (the record's arguments).
    """
    args = event_dict.pop("positional_args", ())
    record: logging.LogRecord = event_dict["_record"]
    if not isinstance(event_dict.get("event"), str):
        return event_dict
    text = event_dict["event"]
    if isinstance(record.msg, str) and isinstance(args, tuple) and args:
        for prefix, field in _PREFIXES:
            if record.msg.startswith(prefix):
                try:
                    text = record.msg[len(prefix) :] % args[1:]
                except (TypeError, ValueError):
                    break  # keep the text as logging made it
                event_dict[field] = str(args[0])
                break
    first, _, rest = _ANSI.sub("", text).partition("\n")
    event_dict["event"] = first
    rest = rest.rstrip("\n")
    if rest:
        field = "exception" if _TRACEBACK in rest and "exception" not in event_dict else "detail"
        event_dict[field] = rest
    for name in _RQ_EXTRAS:
        if name not in event_dict and isinstance(getattr(record, name, None), str):
            event_dict[name] = getattr(record, name)
    return event_dict


class QuietChatter(logging.Filter):
    """A filter that makes some info lines debug lines (by default RQ's, :data:`CHATTER`).

    The record has passed the info-level checks of its logger already, so the filter drops
    it itself unless debug lines are written (``level``).
    """

    def __init__(self, level: int, chatter: Mapping[str, frozenset[str]] | None = None) -> None:
        super().__init__()
        self.level = level
        self.chatter = CHATTER if chatter is None else chatter

    def filter(self, record: logging.LogRecord) -> bool:
        """Demote a chatter record to debug; keep it only when debug lines are written."""
        if record.levelno == logging.INFO and record.msg in self.chatter.get(record.name, ()):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return self.level <= logging.DEBUG
        return True

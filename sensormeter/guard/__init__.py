"""The anomaly guard: reports far off an organization's recent deliveries are held, not sent.

- ``rules.py``: when a reading is implausible (drop to 0, a jump or fall by a large factor);
- ``gate.py``: the :class:`Guard` gate the reporter asks before sending (one query a chunk);
- ``held.py``: held rows in the ledger: released, recounted or superseded.

The recount job is ``sensormeter.tasks.held``; the commands are ``sensormeter held``.
"""

from __future__ import annotations

from .gate import GATE, Guard, recent_deliveries
from .held import (
    HeldRow,
    by_event,
    count_held,
    held_rows,
    newest_deliveries,
    release,
    replace_reading,
    supersede,
)
from .rules import DROP_TO_ZERO, FALL, JUMP, RULES, Thresholds, Trip, judge

__all__ = [
    "DROP_TO_ZERO",
    "FALL",
    "GATE",
    "JUMP",
    "RULES",
    "Guard",
    "HeldRow",
    "Thresholds",
    "Trip",
    "by_event",
    "count_held",
    "held_rows",
    "judge",
    "newest_deliveries",
    "recent_deliveries",
    "release",
    "replace_reading",
    "supersede",
]

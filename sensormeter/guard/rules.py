"""The anomaly guard's rules: when a new reading is too far off the recent delivered values.

Pure functions of numbers, so the rules can be read, tested and documented on their own
(docs/operations.md, "Held reports"). A rule looks only at organizations whose recent count is
meaningful (at least ``min_count`` sensors): a small customer moving by a large factor (1 to
40 sensors on its first day) is ordinary growth, never held.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

DROP_TO_ZERO, JUMP, FALL = "drop_to_zero", "jump", "fall"
RULES = (DROP_TO_ZERO, JUMP, FALL)


@dataclass(frozen=True)
class Thresholds:
    """The guard's settings: the smallest meaningful count and the factor that is held."""

    min_count: int = 10
    factor: float = 10.0

    def as_dict(self) -> dict[str, Any]:
        """The thresholds as the evidence records them."""
        return {"min_count": self.min_count, "factor": self.factor}


@dataclass(frozen=True)
class Trip:
    """A rule a reading tripped, and the sentence a support engineer reads."""

    rule: str  # one of RULES
    explanation: str  # e.g. "dropped to 0 from 15"


def _times(value: float) -> str:
    return f"{value:g}x"


def judge(value: int, previous: Sequence[int], thresholds: Thresholds) -> Trip | None:
    """The rule ``value`` trips against the recent delivered values (newest first), or None.

    - drop to 0: the newest delivered value was at least ``min_count``;
    - jump: ``value`` is at least ``factor`` times every recent value, the largest of them at
      least ``min_count``;
    - fall: ``value`` is at most 1/``factor`` of every recent value, the smallest of them at
      least ``min_count``.

    No history, no trip: an organization never delivered before is never held.
    """
    if not previous:
        return None
    newest, high, low = previous[0], max(previous), min(previous)
    if value == 0 and newest >= thresholds.min_count:
        return Trip(DROP_TO_ZERO, f"dropped to 0 from {newest}")
    if high >= thresholds.min_count and value >= thresholds.factor * high:
        return Trip(
            JUMP,
            f"jumped to {value} from {high} ({_times(round(value / high, 1))}; "
            f"held at {_times(thresholds.factor)} or more)",
        )
    if low >= thresholds.min_count and value * thresholds.factor <= low:
        shrink = f"1/{round(low / value, 1):g}" if value else "0"
        return Trip(
            FALL,
            f"fell to {value} from {low} ({shrink} of it; held at 1/{thresholds.factor:g} or less)",
        )
    return None

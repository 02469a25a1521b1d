"""Organization ids from the usage source that cannot be reported, kept for ``status``.

A host's source may hand back an id that can never be reported (``'acme\\n'``, ``'acme '``).
Report jobs skip it so the rest of the chunk is reported; this module remembers each such id
with its reason in one Redis hash per queue, so that ``sensormeter status`` shows it instead
of leaving one log line per hour as the only trace. An id stays listed for
:data:`SKIPPED_TTL_SECONDS` after it was last seen; at most :data:`MAX_SKIPPED` are kept.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis

from ..errors import shown
from ..keys import skipped_key
from ..logs import get_logger

log = get_logger(__name__)

SKIPPED_TTL_SECONDS = 2 * 24 * 3600
MAX_SKIPPED = 100
_MAX_FIELD = 120  # characters of an id's repr kept: a bad id may be arbitrarily long

# Fields are the ids' repr, values "<unix time last seen>|<reason>". Atomic: set the new
# sightings, drop those unseen for the TTL, then the oldest beyond the bound; refresh the TTL.
_RECORD = """
local key, now, ttl, bound = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
for i = 4, #ARGV, 2 do
  redis.call('hset', key, ARGV[i], ARGV[1] .. '|' .. ARGV[i + 1])
end
local all = redis.call('hgetall', key)
local kept = {}
for i = 1, #all, 2 do
  local seen = tonumber(string.match(all[i + 1], '^(%d+)|')) or 0
  if seen <= now - ttl then
    redis.call('hdel', key, all[i])
  else
    table.insert(kept, {all[i], seen})
  end
end
if #kept > bound then
  table.sort(kept, function(a, b) return a[2] < b[2] end)
  for j = 1, #kept - bound do
    redis.call('hdel', key, kept[j][1])
  end
end
redis.call('expire', key, ttl)
return #kept
"""


@dataclass(frozen=True)
class SkippedId:
    """One organization id that cannot be reported, as ``status`` shows it."""

    shown: str  # the id's repr, so that '\\n' and trailing spaces are visible
    reason: str
    last_seen: float  # unix time

    def describe(self) -> str:
        """``'acme\\n' (has leading or trailing whitespace)``."""
        return f"{self.shown} ({self.reason})"


def record_skipped(
    connection: redis.Redis,
    queue_name: str,
    skipped: Sequence[tuple[object, str]],
    *,
    now: float | None = None,
) -> None:
    """Remember ids the usage source handed back that cannot be reported, with their reason.

    ``skipped`` holds (id, reason) pairs; an id may be any value a source returns (even an
    unhashable one), and is stored as its repr.

    A Redis failure is logged (``skipped.not_recorded``) and not raised: the other
    organizations of the job must still be reported.
    """
    if not skipped:
        return
    moment = int(time.time() if now is None else now)
    args: list[str | int] = [moment, SKIPPED_TTL_SECONDS, MAX_SKIPPED]
    for organization_id, reason in skipped[:MAX_SKIPPED]:
        args += [shown(organization_id, _MAX_FIELD), reason]
    try:
        connection.eval(_RECORD, 1, skipped_key(queue_name), *args)
    except redis.RedisError as exc:
        log.warning(
            "skipped.not_recorded",
            organizations=[shown(o) for o, _ in skipped[:10]],
            error=str(exc) or type(exc).__name__,
        )


def skipped_ids(
    connection: redis.Redis, queue_name: str, *, now: float | None = None
) -> list[SkippedId]:
    """The ids seen in the last :data:`SKIPPED_TTL_SECONDS`, most recently seen first."""
    moment = time.time() if now is None else now
    found = []
    for field, value in connection.hgetall(skipped_key(queue_name)).items():
        shown = field.decode() if isinstance(field, bytes) else str(field)
        text = value.decode() if isinstance(value, bytes) else str(value)
        seen, _, reason = text.partition("|")
        last_seen = float(seen) if seen.isascii() and seen.isdigit() else 0.0
        if last_seen > moment - SKIPPED_TTL_SECONDS:
            found.append(SkippedId(shown, reason, last_seen))
    return sorted(found, key=lambda s: (-s.last_seen, s.shown))

"""Where the shared rate limit keeps its state: Redis (every worker), or memory (tests).

The policy (when to slow down, how fast to recover) is :mod:`sensormeter.meters.ratelimit`'s;
a store only keeps the state, counts accepted events, and books events against a rate.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import redis

from ..keys import LimiterKeys
from .ratelimit import BURST_SECONDS, Snapshot

STATE_TTL = 600  # seconds: the state hash outlives RELEASE_AFTER, then Redis forgets it
BUCKET_TTL = 10  # seconds: an accepted-events bucket is read within ACCEPTED_WINDOW


_GCRA = """
local rate_ms = tonumber(ARGV[1])
local burst_ms = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = t[1] * 1000 + t[2] / 1000
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + n * rate_ms
local allow_at = new_tat - burst_ms
if allow_at <= now then
  redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil(new_tat - now) + 1000)
  return 0
end
return math.ceil(allow_at - now)
"""


def _burst_ms(rate: float, count: int) -> tuple[float, float]:
    interval_ms = 1000.0 / rate
    # At least one event's worth, and a batch larger than the burst books a stretched one.
    return interval_ms, max(BURST_SECONDS * 1000.0, interval_ms, count * interval_ms)


def _float(raw: bytes | str | None) -> float | None:
    return float(raw) if raw not in (None, b"", "") else None


class RedisLimiterStore:
    """The shared state in Redis (keys: :class:`LimiterKeys`)."""

    _FIELDS = ("rate", "cut_at", "grown_at")

    def __init__(self, connection: redis.Redis, keys: LimiterKeys) -> None:
        self.connection = connection
        self.keys = keys
        self._gcra = connection.register_script(_GCRA)

    def _parse(self, values: Sequence[bytes | str | None]) -> Snapshot:
        rate, cut_at, grown_at = (_float(v) for v in values)
        return Snapshot(rate, cut_at, grown_at)

    def sync(self, bucket: int, accepted: int) -> Snapshot:
        """INCRBY the bucket (when there is something to add) and HMGET the state."""
        pipe = self.connection.pipeline(transaction=False)
        if accepted:
            pipe.incrby(self.keys.accepted(bucket), accepted)
            pipe.expire(self.keys.accepted(bucket), BUCKET_TTL)
        pipe.hmget(self.keys.state, self._FIELDS)
        return self._parse(pipe.execute()[-1])

    def accepted_in(self, first: int, last: int) -> int:
        """MGET the buckets' counters and add them up."""
        values = self.connection.mget([self.keys.accepted(b) for b in range(first, last + 1)])
        return sum(int(v) for v in values if v is not None)

    def update(self, change: Callable[[Snapshot], Snapshot | None]) -> tuple[Snapshot, bool]:
        """WATCH the state hash, apply ``change``, write it in MULTI/EXEC; again on a conflict."""
        key = self.keys.state
        with self.connection.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)  # type: ignore[no-untyped-call]
                    current = self._parse(pipe.hmget(key, self._FIELDS))
                    new = change(current)
                    if new is None:
                        pipe.unwatch()
                        return current, False
                    pipe.multi()
                    if new == Snapshot():
                        pipe.delete(key)
                    else:
                        values = (new.rate, new.cut_at, new.grown_at)
                        items = [
                            x
                            for f, v in zip(self._FIELDS, values, strict=True)
                            for x in (f, "" if v is None else repr(v))
                        ]
                        pipe.hset(key, items=items)
                        pipe.expire(key, STATE_TTL)
                    pipe.execute()
                    return new, True
                except redis.WatchError:
                    continue

    def admit(self, rate: float, count: int) -> float:
        """One GCRA call on Redis's clock."""
        interval_ms, burst_ms = _burst_ms(rate, count)
        wait_ms = self._gcra(keys=[self.keys.schedule], args=[interval_ms, burst_ms, count])
        return int(wait_ms) / 1000


class MemoryLimiterStore:
    """The same state in this process only: the in-memory twin for fast tests."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.state = Snapshot()
        self.buckets: dict[int, int] = {}
        self._tat = 0.0

    def sync(self, bucket: int, accepted: int) -> Snapshot:
        """Add to the bucket, return the state."""
        with self._lock:
            if accepted:
                self.buckets[bucket] = self.buckets.get(bucket, 0) + accepted
            return self.state

    def accepted_in(self, first: int, last: int) -> int:
        """Add up the buckets."""
        with self._lock:
            return sum(self.buckets.get(b, 0) for b in range(first, last + 1))

    def update(self, change: Callable[[Snapshot], Snapshot | None]) -> tuple[Snapshot, bool]:
        """Apply ``change`` under a lock."""
        with self._lock:
            new = change(self.state)
            if new is None:
                return self.state, False
            self.state = new
            return new, True

    def admit(self, rate: float, count: int) -> float:
        """The GCRA on the store's clock."""
        interval_ms, burst_ms = _burst_ms(rate, count)
        with self._lock:
            now = self._clock() * 1000
            tat = max(self._tat, now)
            new_tat = tat + count * interval_ms
            if new_tat - burst_ms <= now:
                self._tat = new_tat
                return 0.0
            return (new_tat - burst_ms - now) / 1000

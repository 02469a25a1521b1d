"""A client-side rate limit on meter events, shared by every worker through Redis.

It is a GCRA ("generic cell rate algorithm") kept in one Redis key: each acquire moves a
theoretical arrival time forward by ``n / rate`` seconds, and waits while that time is more
than the burst tolerance ahead of Redis's clock. One Lua call per acquire keeps it atomic
across processes. A 429 from Stripe is still retried: this only keeps us from provoking it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

import redis

# Returns 0 when admitted (and books the events), else the milliseconds to wait.
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


class RateLimiter(Protocol):
    """Blocks until ``count`` more events may be sent."""

    def acquire(self, count: int = 1) -> None:
        """Wait for room for ``count`` events, then book them."""
        ...


class NoRateLimit:
    """No client-side limit (the emulator, or a limit set to 0)."""

    def acquire(self, count: int = 1) -> None:
        """Return at once."""


class RedisRateLimiter:
    """``rate`` events per second across all processes sharing ``key`` in Redis."""

    def __init__(
        self,
        connection: redis.Redis,
        rate: float,
        key: str,
        *,
        burst_seconds: float = 0.1,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self.rate = rate
        self.key = key
        self._script = connection.register_script(_GCRA)
        self._interval_ms = 1000.0 / rate
        # At least one event's worth, so a batch of n events can always get through eventually.
        self._burst_ms = max(burst_seconds * 1000.0, self._interval_ms)
        self._sleep = sleep
        self.waited = 0.0

    def acquire(self, count: int = 1) -> None:
        """Wait until Redis admits ``count`` events, sleeping as long as it says."""
        # A batch larger than the burst would never fit: book it against a stretched burst.
        burst = max(self._burst_ms, count * self._interval_ms)
        while True:
            wait_ms = int(self._script(keys=[self.key], args=[self._interval_ms, burst, count]))
            if wait_ms <= 0:
                return
            self.waited += wait_ms / 1000
            self._sleep(wait_ms / 1000)

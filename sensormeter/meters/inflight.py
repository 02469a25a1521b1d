"""How many requests a report job keeps in flight: a fixed number, or one that follows latency.

The requests in flight a sending rate needs are rate x latency (Little's law): 30 for 1,000
events/s at 30 ms, 300 at 300 ms. A job knows neither the rate it may reach nor how many other
jobs share it, so ``auto`` (the default) learns the number from what it measures:

- while the smoothed latency stays under ``TOLERANCE`` times the lowest latency seen (the
  network and Stripe alone), nothing queues: the window grows by one per answer, doubling
  every round trip, up to the cap;
- above it, requests are queueing somewhere (most often for this machine's CPU): the window
  holds. It does not shrink: on a busy CPU a smaller window only adds event-loop work per
  request and leaves the CPU the other workers and processes compete for just as busy
  (docs/performance.md, "Requests in flight and latency": a rule that shrank to 2 lost half
  the throughput at 30 ms on a loaded machine).

How fast events go out is the rate limiter's business (ratelimit.py), not the window's; but a
429 says the window already holds more than the rate lets through, so it stops growing for
the rest of the chunk (it does not shrink: the limiter paces what is sent).

The window and the lowest latency a job ends with are kept in Redis for the next job (each job
is a fresh work-horse process), so a job starts where the last one left off. Were the lowest
latency measured afresh in each job, it would be measured at the window the last job left,
already queueing on a busy CPU, and the window would creep up job after job to the cap. Kept
as is, a path that became slower for good (another region, a proxy) would hold the window
forever; so the kept lowest latency creeps up by ``BASE_CREEP`` per chunk unless an answer
comes faster, and growth resumes after a few dozen chunks.
"""

from __future__ import annotations

import math
from typing import Protocol

import redis

START = 32  # the first job's window, before anything is measured (never worse at 30 ms)
FLOOR = 2
CAP = 128  # requests in flight per job at most (auto); 5 workers: 640, 2,100 events/s at 300 ms
TOLERANCE = 2.0  # latency above this multiple of the lowest seen means requests queue
SMOOTHING = 0.1  # weight of a new latency in the smoothed latency
GROW = 1.0  # requests added per answer while nothing queues (doubling per round trip)
BASE_CREEP = 0.02  # the kept lowest latency rises 2% per chunk unless an answer comes faster
MEMORY_TTL = 86400  # seconds Redis keeps the last window: a day, past any hourly run


class WindowMemory(Protocol):
    """Where the last job's window is kept for the next (Redis; none in tests)."""

    def load(self) -> tuple[float, float | None] | None:
        """The last window and lowest latency kept, or None."""
        ...

    def save(self, window: float, base: float | None) -> None:
        """Keep the window and the lowest latency for the next job."""
        ...


class InFlight:
    """The number of requests a job may have in flight; fixed, or adapting (``fixed=None``)."""

    def __init__(
        self,
        fixed: int | None = None,
        *,
        start: float | None = None,
        base: float | None = None,
        floor: int = FLOOR,
        cap: int = CAP,
    ) -> None:
        self.fixed = fixed
        self.floor, self.cap = floor, cap
        self._window = float(fixed or min(cap, max(floor, start or START)))
        self.base = base  # the lowest latency seen (kept across chunks, creeping up)
        self.smoothed: float | None = None
        self.throttled = False  # a 429 in this chunk: no more growth until the next

    @property
    def size(self) -> int:
        """Requests allowed in flight now."""
        return int(self._window)

    @property
    def window(self) -> float:
        """The window with its fraction (what is remembered for the next job)."""
        return self._window

    @property
    def queueing(self) -> bool:
        """True when the smoothed latency says requests are waiting somewhere."""
        if self.base is None or self.smoothed is None:
            return False
        return self.smoothed > TOLERANCE * self.base

    def restart(self) -> None:
        """A new chunk: the lowest latency creeps up by BASE_CREEP, the smoothed one restarts."""
        if self.base is not None:
            self.base *= 1 + BASE_CREEP
        self.smoothed = None
        self.throttled = False

    def throttle(self) -> None:
        """Stripe answered a 429: the window stops growing for the rest of the chunk."""
        self.throttled = True

    def observe(self, seconds: float) -> None:
        """Take one request's latency (sending to answer) and adjust the window."""
        if self.fixed is not None or not math.isfinite(seconds) or seconds < 0:
            return
        if self.base is None or seconds < self.base:
            self.base = seconds
        if self.smoothed is None:
            self.smoothed = seconds
        else:
            self.smoothed += (seconds - self.smoothed) * SMOOTHING
        if not self.queueing and not self.throttled:
            self._window = min(float(self.cap), self._window + GROW)


class RedisWindowMemory:
    """The last window of a Stripe mode and transport, in one Redis string."""

    def __init__(self, connection: redis.Redis, key: str) -> None:
        self.connection = connection
        self.key = key

    def load(self) -> tuple[float, float | None] | None:
        """The window and lowest latency kept, or None (none, unreadable, or Redis failing)."""
        try:
            raw = self.connection.get(self.key)
            if raw is None:
                return None
            text = raw.decode() if isinstance(raw, bytes) else str(raw)
            window, _, base = text.partition(" ")
            return float(window), float(base) if base else None
        except (redis.RedisError, ValueError, TypeError):
            return None  # a fresh start costs a few round trips, never a report

    def save(self, window: float, base: float | None) -> None:
        """Keep them; a Redis failure only loses the hint."""
        value = f"{window:.2f}" + ("" if base is None else f" {base:.6f}")
        try:
            self.connection.set(self.key, value, ex=MEMORY_TTL)
        except redis.RedisError:
            pass  # the next job starts from START: slower for a moment, nothing lost

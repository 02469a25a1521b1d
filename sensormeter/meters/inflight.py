"""How many requests a report job keeps in flight: a fixed number, or one that follows latency.

The requests in flight a sending rate needs are rate x latency (Little's law): 30 for 1,000
events/s at 30 ms, 300 at 300 ms. A job knows neither the rate it may reach nor how many other
jobs share it, so ``auto`` (the default) learns the number from what it measures:

- while the smoothed latency stays under ``TOLERANCE`` times the lowest latency seen in the
  chunk (the network and Stripe alone), nothing queues: the window grows by one per answer,
  doubling every round trip, up to the cap;
- above it, requests are queueing somewhere (most often for this machine's CPU): the window
  holds. It does not shrink: on a busy CPU a smaller window only adds event-loop work per
  request and leaves the CPU the other workers and processes compete for just as busy
  (docs/performance.md, "Requests in flight and latency": a rule that shrank to 2 lost half
  the throughput at 30 ms on a loaded machine).

How fast events go out is the rate limiter's business (ratelimit.py), not the window's; but a
429 says the window already holds more than the rate lets through, so it stops growing for
the rest of the chunk (it does not shrink: the limiter paces what is sent).

The window a job ends with is kept in Redis for the next job (each job is a fresh work-horse
process), so a job starts where the last one left off, not from scratch.
"""

from __future__ import annotations

import math
from typing import Protocol

import redis

START = 16  # the first job's window, before anything is measured
FLOOR = 2
CAP = 128  # requests in flight per job at most (auto); 5 workers: 640, 2,100 events/s at 300 ms
TOLERANCE = 2.0  # latency above this multiple of the lowest seen means requests queue
SMOOTHING = 0.1  # weight of a new latency in the smoothed latency
GROW = 1.0  # requests added per answer while nothing queues (doubling per round trip)
MEMORY_TTL = 3600  # seconds Redis keeps the last window


class WindowMemory(Protocol):
    """Where the last job's window is kept for the next (Redis; none in tests)."""

    def load(self) -> float | None:
        """The last window kept, or None."""
        ...

    def save(self, size: float) -> None:
        """Keep ``size`` for the next job."""
        ...


class InFlight:
    """The number of requests a job may have in flight; fixed, or adapting (``fixed=None``)."""

    def __init__(
        self,
        fixed: int | None = None,
        *,
        start: float | None = None,
        floor: int = FLOOR,
        cap: int = CAP,
    ) -> None:
        self.fixed = fixed
        self.floor, self.cap = floor, cap
        self._window = float(fixed or min(cap, max(floor, start or START)))
        self.base: float | None = None  # the lowest latency seen in this chunk
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
        """Forget the latencies, keep the window: each chunk learns the path afresh.

        A lowest latency kept forever would shrink the window to the floor for good once
        the path got slower (a new region, a proxy); one that drifts up while requests queue
        lets the window creep up without end. A chunk is short enough for neither.
        """
        self.base = self.smoothed = None
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

    def load(self) -> float | None:
        """The window kept, or None (none kept, unreadable, or Redis failing)."""
        try:
            raw = self.connection.get(self.key)
            return None if raw is None else float(raw)
        except (redis.RedisError, ValueError, TypeError):
            return None  # a fresh start costs a few round trips, never a report

    def save(self, size: float) -> None:
        """Keep ``size``; a Redis failure only loses the hint."""
        try:
            self.connection.set(self.key, f"{size:.2f}", ex=MEMORY_TTL)
        except redis.RedisError:
            pass  # the next job starts from START: slower for a moment, nothing lost

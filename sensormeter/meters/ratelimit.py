"""A client-side rate limit on meter events, shared by every worker through Redis, that adapts.

Two limits combine: the configured ceiling (``SENSORMETER_RATE_LIMIT``, or the default that
fits the key; there may be none) and an adaptive rate that Stripe's 429s set. The adaptive rate:

- **decreases** on a 429, at most once per ``DECREASE_WINDOW`` across all workers (fifty 429s
  at once make one decrease), to ``DECREASE_FACTOR`` times the rate Stripe *accepted* over the
  last ``ACCEPTED_WINDOW`` (every worker counts its answered events into short Redis buckets);
  in a storm the attempted rate is far above the ceiling, the accepted rate is the ceiling;
- **recovers** multiplicatively, ``GROWTH_FACTOR`` every ``GROW_EVERY`` without a decrease;
  reaching the ceiling, it is dropped and the ceiling alone applies;
- is **released** ``RELEASE_AFTER`` after the last decrease: back to the ceiling, or no limit.

Under a steady Stripe limit the rate in force saws between about 90% and 105-120% of it, and
what Stripe accepts stays close to its limit (docs/performance.md, "A 429 storm").
The shared state is cached in each process for ``REFRESH_SECONDS``, so while no limit is in
force an event costs no Redis round trip. When a rate is in force, each acquire is one Lua
call (a GCRA: a theoretical arrival time moved forward by ``n / rate`` per booking), timed by
Redis's clock; the adaptive state is stamped with the workers' wall clocks (NTP-synchronized
hosts agree to well within its 0.1-second buckets).
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from ..logs import get_logger
from .base import SendResult, classify_error

log = get_logger(__name__)

DECREASE_FACTOR = 0.9
DECREASE_WINDOW = 1.0  # seconds: at most one decrease per window, whatever the number of 429s
ACCEPTED_WINDOW = 1.0  # seconds of accepted events a decrease is computed from
BUCKET_SECONDS = 0.1  # width of the shared counters of accepted events
GROWTH_FACTOR = 1.1
GROW_EVERY = 1.0  # seconds between recovery steps
RELEASE_AFTER = 60.0  # seconds without a decrease before the adaptive rate is dropped
MIN_RATE = 5.0  # events/s: the lowest a decrease goes (below a lower ceiling, the ceiling)
REFRESH_SECONDS = 0.1  # how long a process trusts its copy of the shared state
# A decrease first waits this long, so every worker's count of accepted events (sent at each
# refresh) has reached Redis before the accepted rate is read.
SETTLE_SECONDS = REFRESH_SECONDS + 0.05
BURST_SECONDS = 0.1  # GCRA burst tolerance
MAX_SLEEP = 0.5  # seconds a waiting event sleeps before it looks at the shared rate again
THROTTLE_RETRIES = 3  # tries of a 429'd event inside the same job, after the first
THROTTLE_PAUSE = 0.2  # seconds before the first such try (doubling, jittered to 50-100%)


@dataclass(frozen=True)
class Snapshot:
    """The shared adaptive state; times are wall-clock seconds."""

    rate: float | None = None  # events/s in force; None: only the ceiling (if any)
    cut_at: float | None = None  # the last decrease
    grown_at: float | None = None  # the last recovery step (or the decrease)


class RateLimiter(Protocol):
    """Paces meter events and learns from Stripe's answers."""

    def acquire(self, count: int = 1) -> None:
        """Wait for room for ``count`` events, then book them."""
        ...

    def accepted(self, count: int = 1) -> None:
        """Stripe answered ``count`` events with something other than a 429."""
        ...

    def throttled(self) -> None:
        """Stripe answered a 429 (never raises: bookkeeping must not change an outcome)."""
        ...


class NoRateLimit:
    """No limit and no adaptation (a no-op twin for tests of the transports)."""

    def acquire(self, count: int = 1) -> None:
        """Return at once."""

    def accepted(self, count: int = 1) -> None:
        """Ignore it."""

    def throttled(self) -> None:
        """Ignore it."""


def decreased_rate(in_force: float | None, accepted: float, ceiling: float | None) -> float:
    """The rate after a 429: DECREASE_FACTOR x the accepted rate, below the rate in force.

    One decrease at most halves a rate in force: with few events in the window (the last
    batches of a run, v2's batches of 100) the accepted rate says little.
    """
    floor = MIN_RATE if ceiling is None else min(MIN_RATE, ceiling)
    if in_force is None:
        return max(floor, DECREASE_FACTOR * accepted)
    return max(floor, DECREASE_FACTOR * min(in_force, accepted), in_force / 2)


def grown_rate(rate: float, ceiling: float | None, steps: int = 1) -> float | None:
    """``steps`` recovery steps; None once the ceiling is reached (the ceiling alone applies)."""
    grown = rate * GROWTH_FACTOR**steps
    return None if ceiling is not None and grown >= ceiling else grown


def _lower(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else min(a, b)


def _bucket(moment: float) -> int:
    return int(moment // BUCKET_SECONDS)


def _recently_cut(state: Snapshot, now: float) -> bool:
    return state.cut_at is not None and now - state.cut_at < DECREASE_WINDOW


class LimiterStore(Protocol):
    """Where the shared state lives: Redis, or memory for fast tests."""

    def sync(self, bucket: int, accepted: int) -> Snapshot:
        """Add ``accepted`` to a bucket's counter and read the state, in one round trip."""
        ...

    def accepted_in(self, first: int, last: int) -> int:
        """Accepted events counted in buckets ``first`` to ``last`` inclusive."""
        ...

    def update(self, change: Callable[[Snapshot], Snapshot | None]) -> tuple[Snapshot, bool]:
        """Atomically replace the state by ``change(state)`` unless it returns None.

        Returns the state after, and whether this call changed it.
        """
        ...

    def admit(self, rate: float, count: int) -> float:
        """Book ``count`` events at ``rate`` and return 0, or return the seconds to wait."""
        ...


class AdaptiveRateLimiter:
    """The shared, adapting limit (see the module docstring); thread-safe."""

    def __init__(
        self,
        store: LimiterStore,
        ceiling: float | None = None,
        *,
        name: str = "",
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.store = store
        self.ceiling = ceiling or None
        self.name = name
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._state = Snapshot()
        self._synced_at = float("-inf")
        self._pending = 0  # accepted events not yet added to the shared counters
        self.waited = 0.0

    @property
    def rate(self) -> float | None:
        """Events per second in force now (as of this process's copy); None: no limit."""
        return _lower(self.ceiling, self._state.rate)

    def acquire(self, count: int = 1) -> None:
        """Wait for room for ``count`` events; with no limit in force, return at once."""
        while (wait := self.reserve(count)) > 0:
            self._sleep(wait)

    def reserve(self, count: int = 1) -> float:
        """Book ``count`` events and return 0, or return the seconds to wait before asking again.

        The non-blocking half of :meth:`acquire`, for a caller that waits its own way (the
        v1 transport's event loop).
        """
        now = self._clock()
        if now - self._synced_at >= REFRESH_SECONDS:
            with self._lock:
                if now - self._synced_at >= REFRESH_SECONDS:  # not just done by a peer
                    self._sync(now)
        rate = self.rate
        if rate is None:
            return 0.0
        wait = self.store.admit(rate, count)
        if wait <= 0:
            return 0.0
        # Not booked yet: wake up at least every MAX_SLEEP to see a rate that has grown.
        wait = min(wait, MAX_SLEEP)
        self.waited += wait
        return wait

    def accepted(self, count: int = 1) -> None:
        """Count events Stripe answered; they reach Redis at the next refresh."""
        with self._lock:
            self._pending += count

    def throttled(self) -> None:
        """Decrease the shared rate, unless a decrease happened within DECREASE_WINDOW."""
        now = self._clock()
        if _recently_cut(self._state, now):
            return
        try:
            self._decrease(now)
        except Exception as exc:  # noqa: BLE001 (the event's 429 stays its outcome; logged)
            error = f"{type(exc).__name__}: {exc}"
            log.warning("ratelimit.unavailable", limit=self.name, error=error)

    def _sync(self, now: float) -> None:
        """Send the pending count, read the state, take a recovery step if one is due."""
        pending, self._pending = self._pending, 0
        try:
            state = self.store.sync(_bucket(now), pending)
        except BaseException:
            self._pending += pending
            raise
        state = self._recover(state, now)
        self._state, self._synced_at = state, now

    def _recover(self, state: Snapshot, now: float) -> Snapshot:
        if state.cut_at is None:
            return state

        def step(current: Snapshot) -> Snapshot | None:
            if current.cut_at is None:
                return None
            if now - current.cut_at >= RELEASE_AFTER:
                return Snapshot()
            last = max(current.cut_at, current.grown_at or current.cut_at)
            # Every step due since the last one, even if nobody looked meanwhile (all asleep).
            steps = int((now - last) // GROW_EVERY)
            if current.rate is None or steps < 1:
                return None
            rate = grown_rate(current.rate, self.ceiling, steps)
            return replace(current, rate=rate, grown_at=last + steps * GROW_EVERY)

        if step(state) is None:
            return state
        after, changed = self.store.update(step)
        if changed and after.rate is None and state.rate is not None:
            log.info("ratelimit.restored", limit=self.name, rate=self.ceiling, ceiling=self.ceiling)
        return after

    def _decrease(self, now: float) -> None:
        claim, won = self.store.update(
            lambda s: None if _recently_cut(s, now) else replace(s, cut_at=now, grown_at=now)
        )
        if not won:
            self._state = claim
            return
        previous = _lower(self.ceiling, claim.rate)
        with self._lock:
            pending, self._pending = self._pending, 0
        self.store.sync(_bucket(now), pending)
        self._sleep(SETTLE_SECONDS)
        end = self._clock()
        first = _bucket(end - ACCEPTED_WINDOW)
        accepted = self.store.accepted_in(first, _bucket(end)) / (end - first * BUCKET_SECONDS)
        rate = decreased_rate(previous, accepted, self.ceiling)
        after, _ = self.store.update(lambda s: replace(s, rate=rate) if s.cut_at == now else None)
        with self._lock:
            self._state, self._synced_at = after, end
        log.warning(
            "ratelimit.decreased",
            limit=self.name,
            rate=round(rate, 1),
            previous=None if previous is None else round(previous, 1),
            accepted_rate=round(accepted, 1),
            ceiling=self.ceiling,
        )


def throttle_pause(tried: int) -> float:
    """Seconds before the ``tried``-th retry of a 429'd request (doubling, jittered)."""
    return float(THROTTLE_PAUSE * 2 ** (tried - 1) * random.uniform(0.5, 1.0))


async def send_limited_async(
    limiter: RateLimiter,
    count: int,
    attempt: Callable[[], Awaitable[Sequence[SendResult]]],
) -> list[SendResult]:
    """:func:`send_limited` for an event loop: the waits are ``asyncio.sleep``.

    A limiter with ``reserve`` (the shared one) is asked without blocking the loop; any other
    is asked with ``acquire``, which must then not wait (the in-memory twins).
    """
    results: list[SendResult] = []
    for tried in range(THROTTLE_RETRIES + 1):
        if tried:
            await asyncio.sleep(throttle_pause(tried))
        try:
            reserve = getattr(limiter, "reserve", None)
            if reserve is None:
                limiter.acquire(count)
            else:
                while (wait := reserve(count)) > 0:
                    await asyncio.sleep(wait)
        except Exception as exc:  # noqa: BLE001 (contained: becomes the events' outcome)
            return [classify_error(exc)] * count
        results = list(await attempt())
        if not any(r.http_status == 429 for r in results):
            limiter.accepted(sum(1 for r in results if r.outcome.delivered or r.http_status))
            return results
        # A decrease waits for the workers' counts to settle: off the loop, so the other
        # requests in flight go on meanwhile.
        await asyncio.to_thread(limiter.throttled)
    return results


def send_limited(
    limiter: RateLimiter,
    count: int,
    attempt: Callable[[], Sequence[SendResult]],
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> list[SendResult]:
    """One request of ``count`` events within the limit; a 429 is retried a few times here.

    ``attempt`` must not raise. A 429 is reported to the limiter, then the request waits a
    moment and for the limiter and goes again, up to THROTTLE_RETRIES times (safe: the events
    carry their identifiers). Any exception from the limiter becomes every event's outcome.
    """
    results: list[SendResult] = []
    for tried in range(THROTTLE_RETRIES + 1):
        if tried:
            sleep(throttle_pause(tried))
        try:
            limiter.acquire(count)
        except Exception as exc:  # noqa: BLE001 (contained: becomes the events' outcome)
            return [classify_error(exc)] * count
        results = list(attempt())
        if not any(r.http_status == 429 for r in results):
            limiter.accepted(sum(1 for r in results if r.outcome.delivered or r.http_status))
            return results
        limiter.throttled()
    return results

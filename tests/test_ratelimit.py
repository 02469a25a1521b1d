"""The adaptive shared rate limit: its arithmetic on a fake clock, its sharing on a real Redis."""

from __future__ import annotations

import multiprocessing
import time

import pytest
import redis

from sensormeter import keys as keys_module
from sensormeter.keys import LimiterKeys
from sensormeter.meters.limiter_store import MemoryLimiterStore, RedisLimiterStore
from sensormeter.meters.ratelimit import (
    ACCEPTED_WINDOW,
    BUCKET_SECONDS,
    DECREASE_FACTOR,
    DECREASE_WINDOW,
    GROW_EVERY,
    GROWTH_FACTOR,
    MIN_RATE,
    REFRESH_SECONDS,
    RELEASE_AFTER,
    AdaptiveRateLimiter,
    Snapshot,
    decreased_rate,
    grown_rate,
)

from .conftest import REDIS_URL


class FakeClock:
    """Wall-clock seconds that only move when the code under test sleeps or the test says."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now
        self.slept = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept += seconds
        self.now += seconds

    def advance(self, seconds: float) -> None:
        self.now += seconds


class CountingStore(MemoryLimiterStore):
    """The memory store, counting the round trips a Redis store would make."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.calls = 0

    def sync(self, bucket: int, accepted: int) -> Snapshot:
        self.calls += 1
        return super().sync(bucket, accepted)

    def admit(self, rate: float, count: int) -> float:
        self.calls += 1
        return super().admit(rate, count)


def limiter_on(
    store: MemoryLimiterStore, clock: FakeClock, ceiling: float | None = None
) -> AdaptiveRateLimiter:
    return AdaptiveRateLimiter(store, ceiling, name="test", clock=clock, sleep=clock.sleep)


def deliver(limiter: AdaptiveRateLimiter, clock: FakeClock, rate: float, seconds: float) -> None:
    """Stripe accepts ``rate`` events/s for ``seconds``: acquire, then count each answer."""
    for _ in range(round(rate * seconds)):
        limiter.acquire()
        limiter.accepted()
        clock.advance(1 / rate)


class TestArithmetic:
    def test_decrease_is_a_share_of_the_accepted_rate(self) -> None:
        """A 429 sets 90% of the accepted rate, capped by the rate in force, floored."""
        assert decreased_rate(None, 100.0, None) == pytest.approx(DECREASE_FACTOR * 100)
        assert decreased_rate(50.0, 100.0, None) == pytest.approx(DECREASE_FACTOR * 50)
        assert decreased_rate(None, 0.0, None) == MIN_RATE
        assert decreased_rate(100.0, 10.0, None) == 50.0  # one decrease at most halves
        assert decreased_rate(2.0, 0.0, 2.0) == 2.0  # a ceiling below the floor wins

    def test_recovery_is_multiplicative_up_to_the_ceiling(self) -> None:
        """Each step multiplies the rate; at the ceiling the adaptive rate is dropped."""
        assert grown_rate(90.0, None) == pytest.approx(90 * GROWTH_FACTOR)
        assert grown_rate(90.0, 1000.0) == pytest.approx(90 * GROWTH_FACTOR)
        assert grown_rate(95.0, 100.0) is None


class TestAdaptiveLimiter:
    def test_no_limit_costs_one_state_read_per_refresh(self) -> None:
        """With no limit in force, events pass at once and the store is read once per refresh."""
        clock = FakeClock()
        store = CountingStore(clock)
        limiter = limiter_on(store, clock)
        deliver(limiter, clock, rate=1000, seconds=1.0)
        assert clock.slept == 0
        assert limiter.rate is None
        assert store.calls <= 1.0 / REFRESH_SECONDS + 1

    def test_a_429_slows_down_from_the_accepted_rate(self) -> None:
        """After a 429 the rate is 90% of what Stripe accepted over the last second."""
        clock = FakeClock()
        store = MemoryLimiterStore(clock)
        limiter = limiter_on(store, clock)
        deliver(limiter, clock, rate=100, seconds=3.0)
        limiter.throttled()
        assert limiter.rate == pytest.approx(DECREASE_FACTOR * 100, rel=0.1)
        assert store.state.rate == limiter.rate

    def test_simultaneous_429s_make_one_decrease(self) -> None:
        """Fifty 429s within the window (from two limiters) decrease the rate once."""
        clock = FakeClock()
        store = MemoryLimiterStore(clock)
        first, second = limiter_on(store, clock), limiter_on(store, clock)
        deliver(first, clock, rate=100, seconds=2.0)
        first.throttled()
        after_one = store.state
        for i in range(50):
            (first if i % 2 else second).throttled()
            clock.advance(DECREASE_WINDOW / 100)
        assert store.state == after_one

    def test_another_429_after_the_window_decreases_again(self) -> None:
        """A 429 after the window decreases again, never above the rate in force."""
        clock = FakeClock()
        store = MemoryLimiterStore(clock)
        limiter = limiter_on(store, clock)
        deliver(limiter, clock, rate=100, seconds=2.0)
        limiter.throttled()
        clock.advance(DECREASE_WINDOW)
        deliver(limiter, clock, rate=200, seconds=0.5)  # paced: at most the rate in force
        in_force = limiter.rate
        assert in_force is not None
        limiter.throttled()
        assert limiter.rate is not None
        assert DECREASE_FACTOR * in_force * 0.9 <= limiter.rate <= DECREASE_FACTOR * in_force

    def test_pacing_follows_the_rate_in_force(self) -> None:
        """At a rate in force of R events/s, N events take about N/R seconds."""
        clock = FakeClock()
        store = MemoryLimiterStore(clock)
        limiter = limiter_on(store, clock, ceiling=20.0)
        started = clock.now
        for _ in range(41):
            limiter.acquire()
        assert clock.now - started == pytest.approx(2.0, abs=0.15)

    def test_recovers_multiplicatively_then_the_ceiling_applies(self) -> None:
        """Without 429s the rate grows step by step; reaching the ceiling, the ceiling applies."""
        clock = FakeClock()
        store = MemoryLimiterStore(clock)
        limiter = limiter_on(store, clock, ceiling=60.0)
        deliver(limiter, clock, rate=50, seconds=2.0)
        limiter.throttled()
        low = limiter.rate
        assert low == pytest.approx(DECREASE_FACTOR * 50, rel=0.1)
        rates = []
        for _ in range(12):
            clock.advance(GROW_EVERY)
            limiter.acquire()
            rates.append(limiter.rate)
        assert rates[0] == pytest.approx(low * GROWTH_FACTOR)
        assert rates[1] == pytest.approx(low * GROWTH_FACTOR**2)
        assert rates[-1] == 60.0 and store.state.rate is None

    def test_recovery_steps_are_not_lost_while_every_worker_waits(self) -> None:
        """Steps due while nobody looked are all taken at the next look."""
        clock = FakeClock()
        store = MemoryLimiterStore(clock)
        limiter = limiter_on(store, clock)
        deliver(limiter, clock, rate=50, seconds=2.0)
        limiter.throttled()
        low = limiter.rate
        assert low is not None
        clock.advance(5 * GROW_EVERY + GROW_EVERY / 2)
        limiter.acquire()
        assert limiter.rate == pytest.approx(low * GROWTH_FACTOR**5)

    def test_returns_to_no_limit_after_a_quiet_while(self) -> None:
        """Without a configured limit, no 429 for RELEASE_AFTER seconds means no limit again."""
        clock = FakeClock()
        store = MemoryLimiterStore(clock)
        limiter = limiter_on(store, clock)
        deliver(limiter, clock, rate=100, seconds=2.0)
        limiter.throttled()
        assert limiter.rate is not None
        clock.advance(RELEASE_AFTER)
        limiter.acquire()
        assert limiter.rate is None and store.state == Snapshot()

    def test_a_429_with_nothing_accepted_goes_to_the_floor(self) -> None:
        """A 429 before any event was accepted sets the lowest rate, not zero."""
        clock = FakeClock()
        limiter = limiter_on(MemoryLimiterStore(clock), clock)
        limiter.throttled()
        assert limiter.rate == MIN_RATE

    def test_a_failing_store_never_raises_from_throttled(self) -> None:
        """Redis failing while a 429 is reported is logged, not raised."""

        class Down(MemoryLimiterStore):
            def update(self, change: object) -> tuple[Snapshot, bool]:  # type: ignore[override]
                raise redis.ConnectionError("Connection refused")

        clock = FakeClock()
        limiter = limiter_on(Down(clock), clock)
        limiter.throttled()
        assert limiter.rate is None


def redis_limiter(
    connection: redis.Redis, scope: str, ceiling: float | None = None
) -> AdaptiveRateLimiter:
    return AdaptiveRateLimiter(RedisLimiterStore(connection, LimiterKeys(scope)), ceiling)


class TestSharedThroughRedis:
    def test_a_decrease_reaches_the_other_limiter(self, redis_conn: redis.Redis) -> None:
        """Events counted by both limiters set the decrease, and both then use the same rate."""
        first = redis_limiter(redis_conn, "test:v1")
        second = redis_limiter(redis_conn, "test:v1")
        for limiter in (first, second):
            limiter.acquire()
        first.accepted(60)
        second.accepted(40)
        time.sleep(REFRESH_SECONDS)
        second.acquire()  # its refresh sends its count to Redis
        first.throttled()
        second.throttled()  # within the window: no second decrease
        time.sleep(REFRESH_SECONDS)
        second.acquire()
        assert first.rate is not None and first.rate == second.rate
        # 100 events counted over about ACCEPTED_WINDOW (plus the bucket being filled).
        span = ACCEPTED_WINDOW + BUCKET_SECONDS
        assert DECREASE_FACTOR * 100 / span * 0.9 <= first.rate <= DECREASE_FACTOR * 100
        state = redis_conn.hgetall(LimiterKeys("test:v1").state)
        assert float(state[b"rate"]) == first.rate

    def test_no_limit_means_no_schedule_key(self, redis_conn: redis.Redis) -> None:
        """Without a limit in force nothing is booked in Redis."""
        limiter = redis_limiter(redis_conn, "test:v1")
        for _ in range(100):
            limiter.acquire()
        assert limiter.rate is None
        assert not redis_conn.exists(LimiterKeys("test:v1").schedule)


def _acquire_many(scope: str, rate: float, count: int) -> None:
    limiter = redis_limiter(redis.Redis.from_url(REDIS_URL), scope, rate)
    for _ in range(count):
        limiter.acquire(1)


def test_rate_limit_is_shared_across_processes(redis_conn: redis.Redis) -> None:
    """Two worker processes at one 20 events/s limit take twice as long as one would alone."""
    procs = [
        multiprocessing.get_context("spawn").Process(
            target=_acquire_many, args=("test:shared", 20.0, 30)
        )
        for _ in range(2)
    ]
    started = time.monotonic()
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=30)
    elapsed = time.monotonic() - started
    # 60 events at 20/s need at least ~2.9 s together; unshared, each would finish in ~1.5 s.
    assert elapsed >= 2.5
    assert all(p.exitcode == 0 for p in procs)


def test_keys_are_formatted_in_one_place() -> None:
    """Every key of a limit starts with the shared prefix and its scope."""
    keys = LimiterKeys("live:v1")
    for key in (keys.state, keys.schedule, keys.accepted(7)):
        assert key.startswith(f"{keys_module.KEY_PREFIX}:live:v1:")

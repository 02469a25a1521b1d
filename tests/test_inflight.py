"""The in-flight window: fixed, or following the measured latency; and the loop that obeys it."""

from __future__ import annotations

import asyncio

import pytest
import redis

from sensormeter.errors import ConfigurationError
from sensormeter.meters.inflight import (
    CAP,
    FLOOR,
    SMOOTHING,
    START,
    TOLERANCE,
    InFlight,
    RedisWindowMemory,
)
from sensormeter.meters.v1 import run_window
from sensormeter.settings import Settings


def feed(window: InFlight, latency: float, answers: int) -> None:
    for _ in range(answers):
        window.observe(latency)


class TestFixed:
    def test_a_fixed_window_never_moves(self) -> None:
        """SENSORMETER_MAX_IN_FLIGHT=N keeps N whatever the latency."""
        window = InFlight(12)
        feed(window, 0.03, 100)
        feed(window, 3.0, 100)
        assert window.size == 12


class TestAuto:
    def test_starts_at_start_or_where_the_last_job_ended(self) -> None:
        """A first job starts at START; a later one at the remembered window, within limits."""
        assert InFlight().size == START
        assert InFlight(start=60.7).size == 60
        assert InFlight(start=10_000).size == CAP
        assert InFlight(start=0.5).size == FLOOR
        assert InFlight(start=20, base=0.03).base == 0.03

    def test_steady_latency_doubles_the_window_each_round_trip_up_to_the_cap(self) -> None:
        """Nothing queues (300 ms every time): one more per answer, so x2 per round, then CAP."""
        window = InFlight()
        feed(window, 0.3, START)  # one round trip of answers
        assert window.size == 2 * START
        feed(window, 0.3, 1000)
        assert window.size == CAP

    def test_queueing_holds_the_window_and_it_grows_again_after(self) -> None:
        """Latency far above the lowest seen (requests wait for CPU): the window holds."""
        window = InFlight(start=20)
        feed(window, 0.03, 20)
        feed(window, 0.03 * TOLERANCE * 3, 30)  # the smoothed latency catches up
        held = window.size
        feed(window, 0.03 * TOLERANCE * 3, 400)
        assert window.queueing and window.size == held
        feed(window, 0.03, 200)  # the queue drained
        assert not window.queueing and window.size > held

    def test_a_429_stops_the_growth_for_the_rest_of_the_chunk(self) -> None:
        """More in flight than the rate lets through: hold there; the next chunk may grow."""
        window = InFlight(start=40)
        feed(window, 0.3, 10)
        window.throttle()
        held = window.size
        feed(window, 0.3, 200)
        assert window.size == held == 50
        window.restart()
        feed(window, 0.3, 10)
        assert window.size == held + 10

    @pytest.mark.parametrize("capacity", [6, 40])
    def test_settles_near_what_the_path_can_take(self, capacity: int) -> None:
        """Against a path that serves ``capacity`` requests at once at 30 ms (beyond that they
        queue, as on a busy CPU), a chunk's window stops between capacity and twice it, plus
        what it grows while the smoothed latency catches up (about 1 / SMOOTHING answers)."""
        window = InFlight(start=FLOOR)
        for _ in range(500):
            window.observe(0.03 * max(1.0, window.size / capacity))
        assert capacity <= window.size <= TOLERANCE * capacity + 2 / SMOOTHING

    def test_the_lowest_latency_is_kept_across_chunks_and_creeps_up(self) -> None:
        """A chunk does not take its queued first answers for the path's latency (the window
        would creep to the cap job after job); a path slower for good resumes growth later."""
        window = InFlight(start=32)
        feed(window, 0.03, 20)
        held = window.size
        for _ in range(5):  # later chunks start queued: they hold, they do not grow
            window.restart()
            feed(window, 0.09, 40)
        assert window.size == held
        chunks = 0
        while window.size == held and chunks < 500:  # 10x slower for good
            window.restart()
            feed(window, 0.3, 5)
            chunks += 1
        assert window.size > held and 20 < chunks < 200

    def test_nonsense_latencies_are_ignored(self) -> None:
        """A negative or infinite measurement (a clock jump) changes nothing."""
        window = InFlight()
        for bad in (-1.0, float("inf"), float("nan")):
            window.observe(bad)
        assert window.size == START and window.base is None


class RedisDown:
    """A Redis client whose server is gone."""

    def get(self, key: str) -> bytes:
        raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    def set(self, key: str, value: str, ex: int) -> bool:
        raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")


class TestMemory:
    def test_round_trip_through_redis(self, redis_conn: redis.Redis) -> None:
        """The next job reads the window the last one saved."""
        memory = RedisWindowMemory(redis_conn, "sensormeter:test:inflight")
        assert memory.load() is None
        memory.save(42.5, 0.0312)
        assert memory.load() == (42.5, 0.0312)
        memory.save(16, None)
        assert memory.load() == (16, None)
        assert 0 < redis_conn.ttl("sensormeter:test:inflight") <= 86400

    def test_redis_failing_costs_only_the_hint(self) -> None:
        """An unreachable Redis: load says None, save says nothing; no report is touched."""
        memory = RedisWindowMemory(RedisDown(), "k")  # type: ignore[arg-type]
        assert memory.load() is None
        memory.save(3.0, 0.03)


class TestRunWindow:
    def test_never_more_in_flight_than_the_window_and_follows_it(self) -> None:
        """Every item is handled once; concurrency stays within the window as it changes."""
        window = InFlight(start=4)
        seen: list[int] = []
        peaks: list[tuple[int, int]] = []
        running = 0

        async def handle(item: int) -> None:
            nonlocal running
            running += 1
            peaks.append((running, window.size))
            await asyncio.sleep(0.001)
            seen.append(item)
            running -= 1
            window._window = 12.0 if item == 20 else (3.0 if item == 80 else window._window)

        asyncio.run(run_window(list(range(120)), handle, window))
        assert sorted(seen) == list(range(120))
        assert all(count <= max(size, 12) for count, size in peaks)
        assert max(count for count, _ in peaks) > 4  # it grew to the new window
        assert [count for count, _ in peaks][-10:] and max(c for c, _ in peaks[-10:]) <= 3

    def test_a_base_exception_inside_stops_everything_and_propagates(self) -> None:
        """RQ's shutdown raised inside a request stops the window; nothing swallows it."""

        class Shutdown(BaseException):
            pass

        async def handle(item: int) -> None:
            await asyncio.sleep(0)
            if item == 5:
                raise Shutdown

        with pytest.raises(Shutdown):
            asyncio.run(run_window(list(range(50)), handle, InFlight(4)))


class TestSetting:
    def test_auto_is_the_default_and_zero(self) -> None:
        """SENSORMETER_MAX_IN_FLIGHT=auto (or 0, or unset) is the adaptive window."""
        assert Settings().max_in_flight == 0
        assert Settings.from_env({"SENSORMETER_MAX_IN_FLIGHT": "auto"}).max_in_flight == 0
        assert Settings.from_env({"SENSORMETER_MAX_IN_FLIGHT": "AUTO"}).max_in_flight == 0
        assert Settings.from_env({"SENSORMETER_MAX_IN_FLIGHT": "24"}).max_in_flight == 24

    def test_out_of_range_is_refused(self) -> None:
        """257 or -1 are errors naming the variable."""
        with pytest.raises(ConfigurationError, match="max_in_flight|MAX_IN_FLIGHT"):
            Settings(max_in_flight=257)
        with pytest.raises(ConfigurationError):
            Settings.from_env({"SENSORMETER_MAX_IN_FLIGHT": "lots"})

"""The transports against the emulator: 429s retried inside the job, any failure contained."""

from __future__ import annotations

import time

import pytest
import redis

from sensormeter.emulator import StripeEmulator
from sensormeter.meters import StripeMeterClient, StripeStreamClient
from sensormeter.meters.base import MeterEvent, Outcome
from sensormeter.meters.limiter_store import MemoryLimiterStore
from sensormeter.meters.ratelimit import (
    THROTTLE_RETRIES,
    AdaptiveRateLimiter,
    NoRateLimit,
    Snapshot,
)
from sensormeter.settings import Settings

Client = type[StripeMeterClient] | type[StripeStreamClient]


def event(identifier: str, customer: str, timestamp: int | None = None) -> MeterEvent:
    stamp = int(time.time()) if timestamp is None else timestamp
    return MeterEvent(identifier, "active_sensors", customer, 1, stamp)


def settings_for(emulator: StripeEmulator, transport: str) -> Settings:
    return Settings(
        stripe_api_key="sk_test_x",
        stripe_api_base=emulator.base_url,
        transport=transport,
        max_in_flight=4,
        stripe_timeout_seconds=2,
    )


class RedisDown(NoRateLimit):
    """A limiter whose shared state cannot be read."""

    def acquire(self, count: int = 1) -> None:
        raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")


class TestContainment:
    def test_v1_a_header_http_client_refuses_fails_only_that_event(
        self, emulator: StripeEmulator
    ) -> None:
        """An identifier http.client refuses as a header makes that event retryable; the rest go."""
        client = StripeMeterClient(settings_for(emulator, "v1"))
        events = [event("ok-1", "cus_1"), event("ok-2", "cus_2"), event("bad\nid", "cus_3")]
        results = client.send_many(events)
        delivered, retryable = Outcome.DELIVERED, Outcome.RETRYABLE
        assert [r.outcome for r in results] == [delivered, delivered, retryable]
        assert "ValueError: " in (results[2].error or "")
        assert sorted(e.identifier for e in emulator.events()) == ["ok-1", "ok-2"]

    def test_v1_one_at_a_time_contains_it_too(self, emulator: StripeEmulator) -> None:
        """One request in flight, the bad event first: its half-used connection is dropped."""
        client = StripeMeterClient(settings_for(emulator, "v1").with_overrides(max_in_flight=1))
        results = client.send_many(
            [event("bad\nid", "cus_2"), event("ok-1", "cus_3"), event("ok-2", "cus_4")]
        )
        assert [r.outcome for r in results] == [
            Outcome.RETRYABLE,
            Outcome.DELIVERED,
            Outcome.DELIVERED,
        ]
        assert "ValueError: " in (results[0].error or "")
        assert sorted(e.identifier for e in emulator.events()) == ["ok-1", "ok-2"]

    def test_v2_a_batch_that_cannot_be_built_fails_only_its_events(
        self, emulator: StripeEmulator
    ) -> None:
        """A batch whose body raises gets its events retryable; the other batches go."""
        client = StripeStreamClient(settings_for(emulator, "v2"))
        # cus_1 twice: its second event goes in a second round, so a batch of its own.
        events = [
            event("ok-1", "cus_1"),
            event("ok-2", "cus_2"),
            event("bad-3", "cus_1", timestamp=10**20),  # datetime.fromtimestamp overflows
        ]
        results = client.send_many(events)
        delivered, retryable = Outcome.DELIVERED, Outcome.RETRYABLE
        assert [r.outcome for r in results] == [delivered, delivered, retryable]
        assert results[2].error is not None and results[2].error.split(":")[0] in (
            "OverflowError",
            "ValueError",
            "OSError",
        )

    @pytest.mark.parametrize("client_class", [StripeMeterClient, StripeStreamClient])
    def test_a_limiter_that_raises_never_escapes_send_many(
        self, emulator: StripeEmulator, client_class: Client
    ) -> None:
        """Redis failing under the limit makes every event retryable with the reason."""
        settings = settings_for(emulator, "v1" if client_class is StripeMeterClient else "v2")
        client = client_class(settings, RedisDown())
        results = client.send_many([event("a", "cus_1"), event("b", "cus_2")])
        assert {r.outcome for r in results} == {Outcome.RETRYABLE}
        assert all((r.error or "").startswith("ConnectionError: ") for r in results)
        assert emulator.events() == []


class TestThrottledInsideTheJob:
    @pytest.mark.parametrize("client_class", [StripeMeterClient, StripeStreamClient])
    def test_a_429_is_reported_waited_out_and_tried_again(
        self, emulator: StripeEmulator, client_class: Client
    ) -> None:
        """Two 429s in a row: the limiter slows down and the event is delivered in the same call."""
        settings = settings_for(emulator, "v1" if client_class is StripeMeterClient else "v2")
        store = MemoryLimiterStore()
        client = client_class(settings, AdaptiveRateLimiter(store))
        emulator.inject(429, times=2)
        results = client.send_many([event("a", "cus_1")])
        assert [r.outcome for r in results] == [Outcome.DELIVERED]
        assert [e.identifier for e in emulator.events()] == ["a"]
        assert store.state != Snapshot() and store.state.rate is not None

    def test_429s_beyond_the_tries_are_returned_as_retryable(
        self, emulator: StripeEmulator
    ) -> None:
        """When every try inside the job meets a 429, the event comes back retryable for RQ."""
        client = StripeMeterClient(settings_for(emulator, "v1"))
        emulator.inject(429, times=THROTTLE_RETRIES + 1)
        [result] = client.send_many([event("a", "cus_1")])
        assert result.outcome is Outcome.RETRYABLE and result.http_status == 429
        assert (result.error or "").startswith("RateLimitError: ")
        emulator.inject(429, times=THROTTLE_RETRIES)
        [result] = client.send_many([event("b", "cus_1")])
        assert result.outcome is Outcome.DELIVERED

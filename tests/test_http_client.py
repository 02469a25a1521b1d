"""The keep-alive HTTP client under stripe-python: failures become APIConnectionError."""

from __future__ import annotations

import time

from sensormeter.emulator import StripeEmulator
from sensormeter.meters import StripeMeterClient
from sensormeter.meters.base import MeterEvent, Outcome
from sensormeter.settings import Settings


def client(base: str, timeout: float = 2) -> StripeMeterClient:
    return StripeMeterClient(
        Settings(stripe_api_key="sk_test_x", stripe_api_base=base, stripe_timeout_seconds=timeout)
    )


def event(i: int) -> MeterEvent:
    return MeterEvent(f"http-{i}", "active_sensors", f"cus_{i}", i, int(time.time()))


def test_dropped_connection_is_retryable(emulator: StripeEmulator) -> None:
    """A connection closed without an answer is a retryable APIConnectionError, then recovers."""
    c = client(emulator.base_url)
    assert c.send(event(0)).outcome is Outcome.DELIVERED
    emulator.inject_disconnect(times=2)  # the reconnect-once path meets the second drop too
    result = c.send(event(1))
    assert result.outcome is Outcome.RETRYABLE
    assert result.error is not None and result.error.startswith("APIConnectionError")
    assert c.send(event(1)).outcome is Outcome.DELIVERED


def test_timeout_is_retryable(emulator: StripeEmulator) -> None:
    """An answer slower than the timeout is a retryable connection error naming the timeout."""
    emulator.set_latency(1.5)
    result = client(emulator.base_url, timeout=0.5).send(event(2))
    assert result.outcome is Outcome.RETRYABLE
    assert result.error is not None and "timed out" in result.error


def test_server_restart_reconnects(emulator: StripeEmulator) -> None:
    """A kept-alive connection the server closed is replaced transparently."""
    port = int(emulator.base_url.rsplit(":", 1)[1])
    c = client(emulator.base_url)
    assert c.send(event(3)).outcome is Outcome.DELIVERED
    emulator.stop()
    with StripeEmulator(port=port) as again:
        assert c.send(event(4)).outcome is Outcome.DELIVERED
        assert [e.identifier for e in again.events()] == ["http-4"]


def test_request_ids_are_read(emulator: StripeEmulator) -> None:
    """Stripe's Request-Id header reaches the result (it goes into the ledger)."""
    result = client(emulator.base_url).send(event(5))
    assert result.request_id is not None and result.request_id.startswith("req_")


def test_live_key_is_refused_off_stripe(emulator: StripeEmulator) -> None:
    """A live key aimed at anything but Stripe's address is refused before any call."""
    import pytest

    from sensormeter.errors import ConfigurationError

    for key in ("sk_live_abc", "rk_live_abc"):
        with pytest.raises(ConfigurationError, match="STRIPE_API_KEY: a live key is refused"):
            StripeMeterClient(Settings(stripe_api_key=key, stripe_api_base=emulator.base_url))
    assert emulator.request_count() == 0
    StripeMeterClient(Settings(stripe_api_key="sk_live_abc"))  # Stripe itself: accepted

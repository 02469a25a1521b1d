"""The emulator's v2 meter event stream and rate limit, spoken to by stripe-python."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import stripe

from sensormeter.emulator import StripeEmulator


@pytest.fixture
def emu() -> Iterator[StripeEmulator]:
    with StripeEmulator(session_ttl=1.0) as e:
        yield e


def client(e: StripeEmulator) -> stripe.StripeClient:
    return stripe.StripeClient(
        "sk_test_stream",
        base_addresses={"api": e.base_url, "meter_events": e.base_url},
        max_network_retries=0,
        http_client=stripe.RequestsClient(timeout=5),
    )


def event(i: int, value: str = "3") -> dict[str, object]:
    return {
        "event_name": "active_sensors",
        "identifier": f"id-{i}",
        "timestamp": datetime.now(UTC).isoformat(),
        "payload": {"stripe_customer_id": f"cus_{i}", "value": value},
    }


class TestStream:
    def test_session_then_batch(self, emu: StripeEmulator) -> None:
        """A session token sends a batch of events, all recorded with their values."""
        c = client(emu)
        session = c.v2.billing.meter_event_session.create()
        assert session.authentication_token.startswith("mes_tok_")
        c.v2.billing.meter_event_stream.create(
            params={"events": [event(i) for i in range(100)]},  # type: ignore[typeddict-item]
            options={"api_key": session.authentication_token},
        )
        assert len(emu.events()) == 100
        assert {e.value for e in emu.events()} == {3}

    def test_expired_session_is_stripe_error(self, emu: StripeEmulator) -> None:
        """After the token's lifetime, the stream answers 401 session expired."""
        c = client(emu)
        token = c.v2.billing.meter_event_session.create().authentication_token
        time.sleep(1.1)
        with pytest.raises(stripe.TemporarySessionExpiredError):
            c.v2.billing.meter_event_stream.create(
                params={"events": [event(1)]},  # type: ignore[typeddict-item]
                options={"api_key": token},
            )
        assert emu.events() == []

    def test_more_than_100_events_refused(self, emu: StripeEmulator) -> None:
        """A request of 101 events is a 400."""
        c = client(emu)
        token = c.v2.billing.meter_event_session.create().authentication_token
        with pytest.raises(stripe.InvalidRequestError):
            c.v2.billing.meter_event_stream.create(
                params={"events": [event(i) for i in range(101)]},  # type: ignore[typeddict-item]
                options={"api_key": token},
            )

    def test_bad_and_repeated_events_become_error_reports(self, emu: StripeEmulator) -> None:
        """As on Stripe, invalid or repeated events do not fail the request; they are reported."""
        c = client(emu)
        token = c.v2.billing.meter_event_session.create().authentication_token
        c.v2.billing.meter_event_stream.create(
            params={"events": [event(1), event(1), event(2, value="x")]},  # type: ignore[typeddict-item]
            options={"api_key": token},
        )
        assert [e.identifier for e in emu.events()] == ["id-1"]
        assert [r["identifier"] for r in emu.error_reports()] == ["id-1", "id-2"]


def test_rate_limit_answers_429_beyond_the_ceiling(emu: StripeEmulator) -> None:
    """With a limit of 5 events/s, a burst of 8 v1 calls gets 429 for the calls beyond it."""
    emu.set_rate_limit(5)
    c = client(emu)
    outcomes = []
    for i in range(8):
        try:
            c.v1.billing.meter_events.create(
                params={
                    "event_name": "active_sensors",
                    "identifier": f"rl-{i}",
                    "payload": {"stripe_customer_id": "cus_1", "value": "1"},
                }
            )
            outcomes.append("ok")
        except stripe.RateLimitError:
            outcomes.append("429")
    assert outcomes.count("ok") in (5, 6)  # a refill during the burst may admit one more
    assert outcomes[:5] == ["ok"] * 5 and "429" in outcomes

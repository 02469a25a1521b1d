"""Stripe's v1 meter events: one synchronous, validated call per event, several in flight."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import stripe

from ..meter import (
    MeterEvent,
    Outcome,
    SendResult,
    classify_error,
    make_stripe_client,
    rounds_by_customer,
)
from ..ratelimit import NoRateLimit, RateLimiter
from ..settings import Settings


class StripeMeterClient:
    """POST /v1/billing/meter_events through stripe-python (Stripe, or the emulator)."""

    def __init__(self, settings: Settings, limiter: RateLimiter | None = None) -> None:
        self.client = make_stripe_client(settings)
        self.customer_key = settings.customer_payload_key
        self.value_key = settings.value_payload_key
        self.max_in_flight = settings.max_in_flight
        self.limiter = limiter or NoRateLimit()

    def send(self, event: MeterEvent) -> SendResult:
        """Send one event with its identifier and timestamp; classify any failure."""
        self.limiter.acquire(1)
        try:
            created = self.client.v1.billing.meter_events.create(
                params={
                    "event_name": event.event_name,
                    "identifier": event.identifier,
                    "timestamp": event.timestamp,
                    "payload": {
                        self.customer_key: event.customer,
                        self.value_key: str(event.value),
                    },
                },
                # The idempotency key is the identifier too: whichever of the two Stripe's
                # asynchronous error reports quote, it names the ledger row.
                options={"idempotency_key": event.identifier},
            )
        except stripe.StripeError as exc:
            return classify_error(exc)
        response = getattr(created, "last_response", None)
        return SendResult(Outcome.DELIVERED, request_id=getattr(response, "request_id", None))

    def send_many(self, events: Sequence[MeterEvent]) -> list[SendResult]:
        """Send with up to ``max_in_flight`` calls at once, never two for one customer."""
        results: list[SendResult | None] = [None] * len(events)
        if self.max_in_flight <= 1 or len(events) <= 1:
            return [self.send(e) for e in events]
        with ThreadPoolExecutor(self.max_in_flight, thread_name_prefix="meter-v1") as pool:
            for positions in rounds_by_customer(events):
                for position, result in zip(
                    positions, pool.map(self.send, [events[p] for p in positions]), strict=True
                ):
                    results[position] = result
        return [r for r in results if r is not None]

"""Stripe's v1 meter events: one synchronous, validated call per event, several in flight."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from ..settings import Settings
from .base import (
    MeterEvent,
    Outcome,
    SendResult,
    classify_error,
    make_stripe_client,
    rounds_by_customer,
)
from .ratelimit import NoRateLimit, RateLimiter, send_limited


class StripeMeterClient:
    """POST /v1/billing/meter_events through stripe-python (Stripe, or the emulator)."""

    def __init__(self, settings: Settings, limiter: RateLimiter | None = None) -> None:
        self.client = make_stripe_client(settings)
        self.customer_key = settings.customer_payload_key
        self.value_key = settings.value_payload_key
        self.max_in_flight = settings.max_in_flight
        self.limiter = limiter or NoRateLimit()

    def _attempt(self, event: MeterEvent) -> SendResult:
        """One POST; whatever goes wrong (not only a StripeError) becomes the event's outcome."""
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
            response = getattr(created, "last_response", None)
            request_id = getattr(response, "request_id", None)
        except Exception as exc:  # noqa: BLE001 (one event's failure must not sink the chunk)
            return classify_error(exc)
        return SendResult(Outcome.DELIVERED, request_id=request_id)

    def send(self, event: MeterEvent) -> SendResult:
        """Send one event within the shared limit (a 429 is retried a few times); never raises."""
        return send_limited(self.limiter, 1, lambda: [self._attempt(event)])[0]

    def send_many(self, events: Sequence[MeterEvent]) -> list[SendResult]:
        """Send with up to ``max_in_flight`` calls at once, never two for one customer.

        Never raises: an event whose sending failed in any way gets a retryable outcome.
        """
        if self.max_in_flight <= 1 or len(events) <= 1:
            return [self.send(e) for e in events]
        results: list[SendResult] = [_NOT_SENT] * len(events)
        with ThreadPoolExecutor(self.max_in_flight, thread_name_prefix="meter-v1") as pool:
            for positions in rounds_by_customer(events):
                futures = [(p, pool.submit(self.send, events[p])) for p in positions]
                for position, future in futures:
                    try:
                        results[position] = future.result()
                    except Exception as exc:  # noqa: BLE001 (send contains errors; belt and braces)
                        results[position] = classify_error(exc)
        return results


_NOT_SENT = SendResult(Outcome.RETRYABLE, "not sent")

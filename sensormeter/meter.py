"""Sending meter events to Stripe: a small interface, the real client and an in-memory twin.

Every Stripe failure is classified in one place, :func:`classify_error`, into delivered,
rejected (permanent) or retryable; retrying itself happens in one place too (the RQ job).
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass
from typing import Protocol

import stripe

from .errors import ConfigurationError
from .settings import Settings

DUPLICATE_MESSAGE_PREFIX = "An event already exists with identifier"


@dataclass(frozen=True)
class MeterEvent:
    """One meter event exactly as it goes to Stripe; fixed before the first attempt."""

    identifier: str
    event_name: str
    customer: str
    value: int
    timestamp: int


class Outcome(enum.Enum):
    """What one attempt to send an event came to."""

    DELIVERED = "delivered"
    DUPLICATE = "duplicate"  # Stripe already has this identifier: delivered before.
    REJECTED = "rejected"  # A 400 other than the duplicate answer: permanent, never retried.
    RETRYABLE = "retryable"  # 429, 5xx, timeout, connection error, auth: try again later.

    @property
    def delivered(self) -> bool:
        """True when Stripe has the event (now or from an earlier attempt)."""
        return self in (Outcome.DELIVERED, Outcome.DUPLICATE)


@dataclass(frozen=True)
class SendResult:
    """The outcome of one attempt, with Stripe's message and request id when it failed."""

    outcome: Outcome
    error: str | None = None
    request_id: str | None = None
    http_status: int | None = None


class MeterClient(Protocol):
    """Anything that can send one meter event and say how it went, never raising for Stripe."""

    def send(self, event: MeterEvent) -> SendResult:
        """Send one event; classify any failure instead of raising."""
        ...


def classify_error(exc: stripe.StripeError) -> SendResult:
    """Turn a stripe-python exception into a SendResult (the one place errors are judged)."""
    message = getattr(exc, "user_message", None) or str(exc) or type(exc).__name__
    status = getattr(exc, "http_status", None)
    request_id = getattr(exc, "request_id", None)
    if isinstance(exc, stripe.InvalidRequestError) and message.startswith(DUPLICATE_MESSAGE_PREFIX):
        return SendResult(Outcome.DUPLICATE, message, request_id, status)
    if isinstance(exc, stripe.InvalidRequestError | stripe.IdempotencyError):
        return SendResult(Outcome.REJECTED, message, request_id, status)
    # Rate limits, 5xx/409, timeouts, connection errors; also 401/403, which a corrected key
    # fixes: failing visibly after the retries beats dropping the report as "rejected".
    kind = type(exc).__name__
    return SendResult(Outcome.RETRYABLE, f"{kind}: {message}", request_id, status)


def _is_stripe_host(base: str | None) -> bool:
    return base is None or base.rstrip("/") in (
        "https://api.stripe.com",
        "https://meter-events.stripe.com",
    )


class StripeMeterClient:
    """The real client: ``stripe.StripeClient`` over HTTP (Stripe, or the emulator)."""

    def __init__(self, settings: Settings) -> None:
        key = settings.require_stripe_key()
        if "_live_" in key and not _is_stripe_host(settings.stripe_api_base):
            raise ConfigurationError(
                "STRIPE_API_KEY",
                "a live key is refused when STRIPE_API_BASE is not Stripe's address",
            )
        base = settings.stripe_api_base.rstrip("/") if settings.stripe_api_base else None
        self.customer_key = settings.customer_payload_key
        self.value_key = settings.value_payload_key
        self.client = stripe.StripeClient(
            key,
            base_addresses={"api": base, "meter_events": base} if base else None,
            # Retries happen in one place, the RQ job, so a retried attempt is counted and logged.
            max_network_retries=0,
            http_client=stripe.RequestsClient(timeout=settings.stripe_timeout_seconds),
        )

    def send(self, event: MeterEvent) -> SendResult:
        """POST /v1/billing/meter_events with the event's identifier and timestamp."""
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
                }
            )
        except stripe.StripeError as exc:
            return classify_error(exc)
        response = getattr(created, "last_response", None)
        return SendResult(Outcome.DELIVERED, request_id=getattr(response, "request_id", None))


class InMemoryMeterClient:
    """A twin of Stripe for fast tests: dedupes identifiers and plays scripted outcomes."""

    def __init__(self) -> None:
        self.events: list[MeterEvent] = []
        self.attempts: list[MeterEvent] = []
        self.script: list[SendResult] = []
        self._lock = threading.Lock()

    def send(self, event: MeterEvent) -> SendResult:
        """Record the attempt; play the next scripted failure, else accept or flag a duplicate."""
        with self._lock:
            self.attempts.append(event)
            if self.script:
                return self.script.pop(0)
            if any(e.identifier == event.identifier for e in self.events):
                return SendResult(
                    Outcome.DUPLICATE, f"{DUPLICATE_MESSAGE_PREFIX} {event.identifier}.", None, 400
                )
            self.events.append(event)
            return SendResult(Outcome.DELIVERED)

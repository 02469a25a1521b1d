"""Sending meter events to Stripe: a small interface, the real client and an in-memory twin.

Every Stripe failure is classified in one place, :func:`classify_error`, into delivered,
rejected (permanent) or retryable; retrying itself happens in one place too (the RQ job).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import stripe

from ..errors import ConfigurationError
from ..settings import STRIPE_BASES, Settings
from .http import KeepAliveClient

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
    """Anything that sends meter events and says how each went, never raising for Stripe."""

    def send(self, event: MeterEvent) -> SendResult:
        """Send one event; classify any failure instead of raising."""
        ...

    def send_many(self, events: Sequence[MeterEvent]) -> list[SendResult]:
        """Send several events (concurrently where the transport can); results in order."""
        ...


def classify_error(exc: Exception) -> SendResult:
    """Turn an exception from sending into a SendResult (the one place errors are judged).

    Anything but a stripe-python error (a header http.client refuses, a bug, Redis failing
    under the rate limit) is retryable, with its type and message as the reason.
    """
    if not isinstance(exc, stripe.StripeError):
        # A bug, a malformed value or an odd answer costs only that event: retryable, so it
        # ends visibly failed if it never goes through.
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return SendResult(Outcome.RETRYABLE, f"{type(exc).__name__}: {text}".rstrip(": "))
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


def rounds_by_customer(events: Sequence[MeterEvent]) -> list[list[int]]:
    """Split event positions into rounds where no customer appears twice.

    Stripe allows one concurrent call per customer and meter, and a `last` meter must see a
    customer's events in order; a round is sent concurrently, rounds one after another.
    """
    rounds: list[list[int]] = []
    seen: dict[str, int] = {}
    for position, event in enumerate(events):
        index = seen.get(event.customer, -1) + 1
        seen[event.customer] = index
        if index == len(rounds):
            rounds.append([])
        rounds[index].append(position)
    return rounds


def is_stripe_host(base: str | None) -> bool:
    """True for Stripe's own addresses (or no override at all)."""
    return base is None or base.rstrip("/") in STRIPE_BASES


def make_stripe_client(settings: Settings) -> stripe.StripeClient:
    """A StripeClient for the settings; refuses a live key aimed anywhere but Stripe."""
    key = settings.require_stripe_key()
    if "_live_" in key and not is_stripe_host(settings.stripe_api_base):
        raise ConfigurationError(
            "STRIPE_API_KEY",
            "a live key is refused when STRIPE_API_BASE is not Stripe's address",
        )
    base = settings.stripe_api_base.rstrip("/") if settings.stripe_api_base else None
    return stripe.StripeClient(
        key,
        base_addresses={"api": base, "meter_events": base} if base else None,
        # Retries happen in one place, the RQ job, so a retried attempt is counted and logged.
        max_network_retries=0,
        http_client=_http_client(settings),
    )


def _http_client(settings: Settings) -> stripe.HTTPClient:
    if settings.https_proxy:
        # Through a proxy, stripe-python's requests-based client (it speaks CONNECT).
        return stripe.RequestsClient(
            timeout=settings.stripe_timeout_seconds, proxy=settings.https_proxy
        )
    return KeepAliveClient(settings.stripe_timeout_seconds)

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
from .aio import AsyncKeepAliveClient
from .http import KeepAliveClient

DUPLICATE_MESSAGE_PREFIX = "An event already exists with identifier"
# Stripe's documented code for "the object to create already exists"; taken for the
# duplicate answer if Stripe ever sends it (today it sends none for meter events).
DUPLICATE_CODE = "resource_already_exists"
# Answers that a later attempt can succeed on, whatever Stripe-Should-Retry says:
# 401/403 (a corrected key fixes them), 409 (a conflict), 429 (the rate limit); and any 5xx.
RETRYABLE_STATUSES = frozenset({401, 403, 409, 429})


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
    """The outcome of one attempt, with Stripe's message and request id when it failed.

    ``code`` and ``param`` are Stripe's error code and parameter, when it sent them: the
    quarantine reads them to tell a refused customer or meter from a bad event.
    """

    outcome: Outcome
    error: str | None = None
    request_id: str | None = None
    http_status: int | None = None
    code: str | None = None
    param: str | None = None


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

    Stripe's fields for machines decide before its message text: the ``Stripe-Should-Retry``
    header, the HTTP status and the error ``code``; the message is read only to recognise the
    duplicate answer, for which Stripe sends no code. Anything but a stripe-python error (a
    header http.client refuses, a bug, Redis failing under the rate limit) is retryable, with
    its type and message as the reason.
    """
    if not isinstance(exc, stripe.StripeError):
        # A bug, a malformed value or an odd answer costs only that event: retryable, so it
        # ends visibly failed if it never goes through.
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return SendResult(Outcome.RETRYABLE, f"{type(exc).__name__}: {text}".rstrip(": "))
    message = exc.user_message or str(exc) or type(exc).__name__
    status = exc.http_status
    request_id = exc.request_id
    should_retry = should_retry_header(exc)
    code, param = exc.code, getattr(exc, "param", None)
    retryable = SendResult(
        Outcome.RETRYABLE, f"{type(exc).__name__}: {message}", request_id, status, code, param
    )
    # The header may only make an answer retryable: "false" never turns a 401/403, a 409, a
    # 429 or a 5xx into a permanent rejection, since a wrong "rejected" drops a report for good.
    if should_retry is True or status in RETRYABLE_STATUSES or (status or 0) >= 500:
        return retryable
    if is_duplicate_answer(exc, message):
        return SendResult(Outcome.DUPLICATE, message, request_id, status, code, param)
    if isinstance(exc, stripe.InvalidRequestError | stripe.IdempotencyError):
        return SendResult(Outcome.REJECTED, message, request_id, status, code, param)
    # Timeouts, connection errors, and anything stripe-python has no 4xx class for.
    return retryable


def should_retry_header(exc: stripe.StripeError) -> bool | None:
    """Stripe's ``Stripe-Should-Retry`` answer header: True, False, or None when absent."""
    # Header names are case-insensitive; which case arrives depends on the HTTP client.
    for name, value in (exc.headers or {}).items():
        if name.lower() == "stripe-should-retry":
            answer = str(value).strip().lower()
            return {"true": True, "false": False}.get(answer)
    return None


def is_duplicate_answer(exc: stripe.StripeError, message: str) -> bool:
    """True for Stripe's answer to a repeated identifier: the event was delivered before.

    A 400 ``invalid_request_error``, sent with ``Stripe-Should-Retry: false``. Stripe gives it
    no error code today (only the message), so a code saying the resource exists is taken
    first and the English message prefix is the fallback that matches in practice.
    """
    if not isinstance(exc, stripe.InvalidRequestError) or exc.http_status != 400:
        return False
    if exc.code == DUPLICATE_CODE and exc.param in (None, "identifier"):
        return True
    return message.startswith(DUPLICATE_MESSAGE_PREFIX)


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


def make_stripe_client(
    settings: Settings, http_client: stripe.HTTPClient | None = None
) -> stripe.StripeClient:
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
        http_client=http_client or make_http_client(settings),
    )


def make_http_client(settings: Settings, *, asynchronous: bool = False) -> stripe.HTTPClient:
    """The HTTP client under stripe-python: kept-alive http.client, or asyncio for v1's loop."""
    if settings.https_proxy:
        # Through a proxy, stripe-python's requests-based client (it speaks CONNECT).
        return stripe.RequestsClient(
            timeout=settings.stripe_timeout_seconds, proxy=settings.https_proxy
        )
    if asynchronous:
        return AsyncKeepAliveClient(settings.stripe_timeout_seconds)
    return KeepAliveClient(settings.stripe_timeout_seconds)

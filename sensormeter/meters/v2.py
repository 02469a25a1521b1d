"""Stripe's v2 meter event stream: batches of up to 100 events per request, session tokens.

Stripe validates stream events asynchronously: an accepted request means "received", and
problems arrive later as ``v1.billing.meter.error_report_triggered`` events. That is why v1
stays the default transport.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import stripe

from ..defaults import STREAM_BATCH_SIZE
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

RENEW_MARGIN_SECONDS = 60  # renew a session this long before its 15 minutes run out
# Batches in flight with SENSORMETER_MAX_IN_FLIGHT=auto: eight batches of 100 events keep a
# job's share of a 10,000 events/s stream busy at 30 ms, and its database work dominates.
V2_IN_FLIGHT = 8


class StripeStreamClient:
    """POST /v2/billing/meter_event_stream with a meter event session token."""

    def __init__(
        self,
        settings: Settings,
        limiter: RateLimiter | None = None,
        *,
        clock: Any = time.time,
        renew_margin: float = RENEW_MARGIN_SECONDS,
    ) -> None:
        self.client = make_stripe_client(settings)
        self.customer_key = settings.customer_payload_key
        self.value_key = settings.value_payload_key
        self.max_in_flight = settings.max_in_flight or V2_IN_FLIGHT
        self.limiter = limiter or NoRateLimit()
        self._clock = clock
        self._renew_margin = renew_margin
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires_at = 0.0
        self.sessions_created = 0

    def _session_token(self, stale: str | None = None) -> str:
        """The current token, renewed when close to expiry or when ``stale`` was refused."""
        with self._lock:
            due = self._clock() >= self._expires_at - self._renew_margin
            if self._token is None or due or self._token == stale:
                session = self.client.v2.billing.meter_event_session.create()
                self._token = session.authentication_token
                expires = datetime.fromisoformat(str(session.expires_at).replace("Z", "+00:00"))
                self._expires_at = expires.replace(tzinfo=expires.tzinfo or UTC).timestamp()
                self.sessions_created += 1
            return self._token

    def _body(self, event: MeterEvent) -> dict[str, Any]:
        return {
            "event_name": event.event_name,
            "identifier": event.identifier,
            "timestamp": datetime.fromtimestamp(event.timestamp, UTC).isoformat(),
            "payload": {self.customer_key: event.customer, self.value_key: str(event.value)},
        }

    def _attempt(self, batch: Sequence[MeterEvent]) -> list[SendResult]:
        """One stream request; a session that expired meanwhile is renewed and the batch resent.

        Whatever goes wrong (not only a StripeError) becomes the outcome of the batch's events.
        """
        try:
            params: Any = {"events": [self._body(e) for e in batch]}
            stale: str | None = None
            for _ in range(2):
                token = self._session_token(stale)
                try:
                    self.client.v2.billing.meter_event_stream.create(
                        params=params, options={"api_key": token}
                    )
                    return [SendResult(Outcome.DELIVERED)] * len(batch)
                except stripe.TemporarySessionExpiredError:
                    stale = token
        except Exception as exc:  # noqa: BLE001 (one batch's failure must not sink the chunk)
            return [classify_error(exc)] * len(batch)
        expired = SendResult(Outcome.RETRYABLE, "TemporarySessionExpiredError: renewed twice")
        return [expired] * len(batch)

    def _post(self, batch: Sequence[MeterEvent]) -> list[SendResult]:
        """Send one batch within the shared limit (a 429 is retried a few times); never raises."""
        return send_limited(self.limiter, len(batch), lambda: self._attempt(batch))

    def send(self, event: MeterEvent) -> SendResult:
        """Send one event as a batch of one."""
        return self._post([event])[0]

    def send_many(self, events: Sequence[MeterEvent]) -> list[SendResult]:
        """Batches of 100, several in flight; a customer appears once per round of batches.

        Never raises: the events of a batch whose sending failed in any way get a retryable
        outcome.
        """
        results: list[SendResult] = [_NOT_SENT] * len(events)
        with ThreadPoolExecutor(max(1, self.max_in_flight), thread_name_prefix="meter-v2") as pool:
            for positions in rounds_by_customer(events):
                batches = [
                    positions[i : i + STREAM_BATCH_SIZE]
                    for i in range(0, len(positions), STREAM_BATCH_SIZE)
                ]
                futures = [(b, pool.submit(self._post, [events[p] for p in b])) for b in batches]
                for batch, future in futures:
                    try:
                        answer = future.result()
                    except Exception as exc:  # noqa: BLE001 (_post contains errors; belt and braces)
                        answer = [classify_error(exc)] * len(batch)
                    for position, result in zip(batch, answer, strict=True):
                        results[position] = result
        return results


_NOT_SENT = SendResult(Outcome.RETRYABLE, "not sent")

"""The emulator's v2 meter event stream parts: sessions and the request body."""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

SESSION_SECONDS = 15 * 60  # Stripe's meter event session tokens live 15 minutes.
MAX_STREAM_EVENTS = 100  # events per v2 stream request


class SessionStore:
    """Session tokens and their expiry, as POST /v2/billing/meter_event_session makes them."""

    def __init__(self, clock: Callable[[], float], ttl: float = SESSION_SECONDS) -> None:
        self._clock = clock
        self.ttl = ttl
        self._lock = threading.Lock()
        self._tokens: dict[str, float] = {}

    def create(self) -> dict[str, Any]:
        """A new session object, shaped like Stripe's ``v2.billing.meter_event_session``."""
        now = self._clock()
        token = "mes_tok_" + secrets.token_hex(16)
        with self._lock:
            self._tokens[token] = now + self.ttl
        return {
            "id": "mes_" + secrets.token_hex(8),
            "object": "v2.billing.meter_event_session",
            "authentication_token": token,
            "created": _iso(now),
            "expires_at": _iso(now + self.ttl),
            "livemode": False,
        }

    def state(self, token: str) -> str:
        """'valid', 'expired' or 'unknown' for a bearer token."""
        with self._lock:
            expires = self._tokens.get(token)
        if expires is None:
            return "unknown"
        return "valid" if self._clock() < expires else "expired"

    def clear(self) -> None:
        """Forget every session."""
        with self._lock:
            self._tokens.clear()


def _iso(moment: float) -> str:
    return (
        datetime.fromtimestamp(moment, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def parse_iso(value: object) -> int | None:
    """Unix seconds from an ISO 8601 timestamp string (v2 events), or None when malformed."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


def parse_stream_body(body: bytes) -> list[dict[str, Any]] | str:
    """The ``events`` list of a stream request, or a message saying what is wrong with it."""
    try:
        data = json.loads(body or b"{}")
    except ValueError:
        return "Request body is not valid JSON."
    events = data.get("events") if isinstance(data, dict) else None
    if not isinstance(events, list) or not events:
        return "Missing required param: events."
    if len(events) > MAX_STREAM_EVENTS:
        return f"Invalid events: at most {MAX_STREAM_EVENTS} events per request."
    if not all(isinstance(e, dict) for e in events):
        return "Invalid events: each event must be an object."
    return events

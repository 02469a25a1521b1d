"""The meter events the emulator accepted: their validation, the 24 h identifiers, the meters."""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass

from .replies import WHOLE_NUMBER, check

DEFAULT_METER = "active_sensors"
MAX_PAST_SECONDS = 35 * 86400
MAX_FUTURE_SECONDS = 5 * 60
IDENTIFIER_WINDOW_SECONDS = 24 * 3600
MAX_NAME_LENGTH = 100


@dataclass(frozen=True)
class ReceivedEvent:
    """One meter event the emulator accepted."""

    event_name: str
    identifier: str
    customer: str
    value: int
    timestamp: int
    received_at: float
    payload: dict[str, str]
    idempotency_key: str | None = None


class EventLog:
    """The accepted events in arrival order, the identifiers seen and a meter per event name."""

    def __init__(self, created: int, customer_key: str, value_key: str) -> None:
        self.customer_key, self.value_key = customer_key, value_key
        self._created = created
        self._lock = threading.Lock()
        self._events: list[ReceivedEvent] = []
        self._identifiers: dict[str, float] = {}
        self._meters: dict[str, int] = {DEFAULT_METER: created}

    def events(self) -> list[ReceivedEvent]:
        """Return the accepted meter events in arrival order."""
        with self._lock:
            return list(self._events)

    def count(self) -> int:
        """Return how many events were accepted."""
        with self._lock:
            return len(self._events)

    def meters(self) -> dict[str, int]:
        """Return each meter's event name and creation time, the default meter included."""
        with self._lock:
            return dict(self._meters)

    def clear(self) -> None:
        """Forget events, identifiers and meters seen."""
        with self._lock:
            self._events.clear()
            self._identifiers.clear()
            self._meters = {DEFAULT_METER: self._created}

    def record(
        self,
        name: str,
        identifier: str | None,
        payload: dict[str, str],
        timestamp: int,
        now: float,
        idempotency_key: str | None = None,
    ) -> ReceivedEvent | None:
        """Validate one event and keep it; None when its identifier was seen in the last 24 h."""
        check(bool(name), "Missing required param: event_name.", "event_name")
        check(len(name) <= MAX_NAME_LENGTH, "Invalid event_name: too long.", "event_name")
        check(bool(payload), "Missing required param: payload.", "payload")
        customer_param, value_param = f"payload[{self.customer_key}]", f"payload[{self.value_key}]"
        customer, value = payload.get(self.customer_key, ""), payload.get(self.value_key)
        check(bool(customer), f"Missing required param: {customer_param}.", customer_param)
        check(value is not None, f"Missing required param: {value_param}.", value_param)
        # A whole number in a string, as Stripe wants; a `last` meter of a count is never < 0.
        problem = f'Invalid {value_param}: {value!r} is not a whole number like "17".'
        check(bool(WHOLE_NUMBER.fullmatch(value or "")), problem, value_param)
        ts = "timestamp"
        check(timestamp >= now - MAX_PAST_SECONDS, "Invalid timestamp: older than 35 days.", ts)
        check(timestamp <= now + MAX_FUTURE_SECONDS, "Invalid timestamp: over 5 minutes ahead.", ts)
        identifier = identifier if identifier is not None else "evt_" + secrets.token_hex(12)
        problem = f"Invalid identifier: must be 1 to {MAX_NAME_LENGTH} characters."
        check(0 < len(identifier) <= MAX_NAME_LENGTH, problem, "identifier")
        event = ReceivedEvent(
            name, identifier, customer, int(value or 0), timestamp, now, payload, idempotency_key
        )
        # Check and record under one lock: of two concurrent repeats exactly one may win.
        with self._lock:
            seen = self._identifiers.get(identifier)
            if seen is not None and now - seen < IDENTIFIER_WINDOW_SECONDS:
                return None
            self._identifiers[identifier] = now
            self._events.append(event)
            self._meters.setdefault(name, int(now))
        return event

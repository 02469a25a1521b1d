"""A twin of Stripe for fast tests: dedupes identifiers and plays scripted outcomes."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from .base import DUPLICATE_MESSAGE_PREFIX, MeterEvent, Outcome, SendResult


class InMemoryMeterClient:
    """Records every attempt; ``script`` holds outcomes to play before accepting again."""

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
                message = f"{DUPLICATE_MESSAGE_PREFIX} {event.identifier}."
                return SendResult(Outcome.DUPLICATE, message, None, 400)
            self.events.append(event)
            return SendResult(Outcome.DELIVERED)

    def send_many(self, events: Sequence[MeterEvent]) -> list[SendResult]:
        """Send one after another, in order."""
        return [self.send(event) for event in events]

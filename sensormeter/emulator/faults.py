"""The emulator's injected faults, latency and rate limit, met by every meter-event request."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from .replies import Reply

# status (None: drop the connection), and a message (JSON error) or a raw page (bytes)
Fault = tuple[int | None, str | bytes | None]
_SPEC_KEYS = {"status", "times", "message", "disconnect", "latency", "rate_limit"}


class TokenBucket:
    """A rate limit of ``rate`` events per second with one second of burst; None means none."""

    def __init__(self, rate: float | None, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.set_rate(rate)

    def set_rate(self, rate: float | None) -> None:
        """Change the limit (None or 0 turns it off) and refill the bucket."""
        if rate is not None and rate < 0:
            raise ValueError(f"rate limit must not be negative, got {rate}")
        with self._lock:
            self.rate = rate or None
            self._tokens = float(self.rate or 0)
            self._stamp = self._clock()

    def take(self, count: int) -> bool:
        """Take ``count`` tokens if they are there; False means answer 429."""
        with self._lock:
            if self.rate is None:
                return True
            now = self._clock()
            self._tokens = min(self.rate, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            if self._tokens < count:
                return False
            self._tokens -= count
            return True


class Faults:
    """The queued faults, the latency, the rate limit and the count of meter-event requests."""

    def __init__(self, rate_limit: float | None, stopping: threading.Event) -> None:
        self._stopping = stopping  # set by stop(): wakes requests sleeping in latency
        self._lock = threading.Lock()
        self._queue: deque[Fault] = deque()
        self._latency = 0.0
        self._requests = 0
        self._bucket = TokenBucket(rate_limit)

    def inject(self, status: int, times: int = 1, *, message: str | None = None) -> None:
        """Answer the next `times` meter-event POSTs with this HTTP error status."""
        if not 400 <= status <= 599:
            raise ValueError(f"status must be an HTTP error status (400-599), got {status}")
        self._add((status, message), times)

    def inject_page(self, status: int, page: bytes, times: int = 1) -> None:
        """Answer the next `times` meter-event POSTs with a raw (non-JSON) page."""
        if not 400 <= status <= 599:
            raise ValueError(f"status must be an HTTP error status (400-599), got {status}")
        self._add((status, page), times)

    def inject_disconnect(self, times: int = 1) -> None:
        """Drop the connection of the next `times` meter-event POSTs without answering."""
        self._add((None, None), times)

    def set_latency(self, seconds: float) -> None:
        """Sleep this long before answering every meter-event POST; 0 turns it off."""
        if seconds < 0:
            raise ValueError(f"latency must not be negative, got {seconds}")
        with self._lock:
            self._latency = float(seconds)

    def set_rate_limit(self, events_per_second: float | None) -> None:
        """Answer 429 beyond this many meter events per second; None or 0 turns it off."""
        self._bucket.set_rate(events_per_second)

    def request_count(self) -> int:
        """Return how many meter-event requests arrived, faulted ones included."""
        with self._lock:
            return self._requests

    def reset(self) -> None:
        """Forget faults, latency, the rate limit and the request count."""
        with self._lock:
            self._queue.clear()
            self._latency, self._requests = 0.0, 0
        self._bucket.set_rate(None)

    def state(self) -> dict[str, Any]:
        """The request count, queued faults, latency and rate limit, for /_emulator/stats."""
        with self._lock:
            return {
                "request_count": self._requests,
                "queued_faults": len(self._queue),
                "latency": self._latency,
                "rate_limit": self._bucket.rate,
            }

    def apply_spec(self, body: bytes) -> None:
        """Apply a JSON fault specification (POST /_emulator/faults); Reply 400 when invalid."""
        try:
            spec = json.loads(body or b"{}")
            if not isinstance(spec, dict) or not spec.keys() <= _SPEC_KEYS:
                raise ValueError(f"expected a JSON object with keys among {sorted(_SPEC_KEYS)}")
            if "status" in spec:
                times, message = int(spec.get("times", 1)), spec.get("message")
                self.inject(int(spec["status"]), times, message=message)
            if "disconnect" in spec:
                self.inject_disconnect(int(spec["disconnect"]))
            if "latency" in spec:
                self.set_latency(float(spec["latency"]))
            if "rate_limit" in spec:
                self.set_rate_limit(spec["rate_limit"] and float(spec["rate_limit"]))
        except (ValueError, TypeError) as exc:
            raise Reply(400, f"Invalid fault specification: {exc}") from exc

    def admit(self, count: int) -> bool:
        """Apply faults, latency and the rate limit to a meter-event request of ``count`` events.

        Returns False when the connection is to be dropped; raises Reply for an error answer.
        """
        with self._lock:
            self._requests += 1
            latency = self._latency
            # Take the fault at arrival, so queued faults meet requests in arrival order.
            status, message = self._queue.popleft() if self._queue else (0, None)
        # stop() ends the wait early; a stopping emulator then answers nothing, like a dead host.
        if status is None or (latency and self._stopping.wait(latency)):
            return False
        if isinstance(message, bytes):
            page = Reply(status, "raw page")
            page.response = (status, message, {"Content-Type": "text/html; charset=iso-8859-1"})
            raise page
        if status == 429 or (not status and not self._bucket.take(count)):
            text = str(message or "Request rate limit exceeded.")
            raise Reply(429, text, kind="rate_limit_error", code="rate_limit")
        if status:
            kind = "api_error" if status >= 500 else "invalid_request_error"
            raise Reply(status, str(message or "Injected error."), kind=kind)
        return True

    def _add(self, fault: Fault, times: int) -> None:
        if times < 1:
            raise ValueError(f"times must be at least 1, got {times}")
        with self._lock:
            self._queue.extend([fault] * times)

"""A local HTTP emulator of Stripe's Billing Meter endpoints, for tests and local runs."""

from __future__ import annotations

import contextlib
import functools
import re
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from email.message import Message
from http.server import ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any
from urllib.parse import parse_qsl

from .events import EventLog, ReceivedEvent
from .faults import Faults
from .http import RequestHandler, parse_form
from .reads import meter_list, page, summaries
from .refusals import Refusals, RefusedEvent
from .replies import WHOLE_NUMBER, Reply, Response, check
from .stream import SESSION_SECONDS, SessionStore, parse_iso, parse_stream_body

_API_KEY = re.compile(r"(sk|rk)_(test|live)_\S+")
_SUMMARIES_PATH = re.compile(r"/v1/billing/meters/([^/]+)/event_summaries")
_EVENT_PATH = re.compile(r"/v2/core/events/([^/]+)")
_CUSTOMER_PATH = re.compile(r"/v1/customers/([^/]+)")


def _mask(key: str) -> str:
    """Hide all but the ends of an API key, as Stripe does in its error messages."""
    return key[:8] + "*" * (len(key) - 12) + key[-4:] if len(key) >= 12 else "*" * len(key)


class _Server(ThreadingHTTPServer):
    """The HTTP server, with Stripe's appetite for new connections.

    socketserver's listen backlog of 5 drops the connections a client opens at once beyond
    it, which then wait a second for the SYN to be resent: latency Stripe never shows.
    """

    request_queue_size = 256


class StripeEmulator:
    """A loopback HTTP server that answers stripe-python's Billing Meter calls like Stripe."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        customer_key: str = "stripe_customer_id",
        value_key: str = "value",
        clock: Callable[[], float] = time.time,
        rate_limit: float | None = None,
        session_ttl: float = SESSION_SECONDS,
    ) -> None:
        self.host, self.port = host, port
        self.customer_key, self.value_key = customer_key, value_key
        self._clock = clock
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._log = EventLog(int(clock()), customer_key, value_key)
        self._faults = Faults(rate_limit, self._stopping)
        self._sessions = SessionStore(clock, session_ttl)
        self._refusals = Refusals()
        self._error_reports: list[dict[str, Any]] = []
        self._v2_events: dict[str, dict[str, Any]] = {}
        self._connections: set[socket.socket] = set()

    def start(self) -> StripeEmulator:
        """Bind the port and serve in a daemon thread; returns self."""
        if self._server is not None:
            raise RuntimeError("the emulator is already running")
        self._stopping.clear()
        handler = type("_BoundHandler", (RequestHandler,), {"emulator": self})
        self._server = _Server((self.host, self.port), handler)
        # A request parked in injected latency must never keep the process or stop() waiting.
        self._server.daemon_threads = True
        # A short poll interval keeps stop() (which waits for the next poll) fast in tests.
        serve = functools.partial(self._server.serve_forever, poll_interval=0.05)
        self._thread = threading.Thread(target=serve, name="stripe-emulator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port; safe to call twice."""
        if self._server is None or self._thread is None:
            return
        self._stopping.set()  # wake handlers sleeping in injected latency
        self._server.shutdown()
        self._server.server_close()
        # Kept-alive connections would otherwise go on being served by a stopped emulator.
        for connection in list(self._connections):
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        self._thread.join()
        self._server = self._thread = None

    def __enter__(self) -> StripeEmulator:
        """Start the emulator for a with-block."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the emulator at the end of a with-block."""
        self.stop()

    @property
    def base_url(self) -> str:
        """The address to give stripe-python, with the port actually bound."""
        if self._server is None:
            raise RuntimeError("the emulator is not running; call start() first")
        return f"http://{self.host}:{self._server.server_address[1]}"

    def events(self) -> list[ReceivedEvent]:
        """Return the accepted meter events in arrival order."""
        return self._log.events()

    def error_reports(self) -> list[dict[str, Any]]:
        """Stream events refused after their request was accepted (Stripe's async errors)."""
        with self._lock:
            return list(self._error_reports)

    def add_v2_event(self, event: dict[str, Any]) -> None:
        """Register a full v2 event (as ``GET /v2/core/events/{id}`` returns it) under its id."""
        with self._lock:
            self._v2_events[str(event["id"])] = dict(event)

    def delete_customer(self, customer: str, *, purge: bool = False) -> None:
        """Delete a customer: its events are refused in error reports, GET says ``deleted``.

        ``purge`` makes ``GET /v1/customers/{id}`` answer 404, as for an id never created.
        """
        self._refusals.delete_customer(customer, purge=purge)

    def restore_customer(self, customer: str) -> None:
        """Make a deleted customer exist again; its later events are accepted."""
        self._refusals.restore_customer(customer)

    def archive_meter(self, event_name: str = "active_sensors") -> None:
        """Archive the meter of this event name: every event for it is refused afterwards."""
        self._refusals.archive_meter(event_name)

    def reactivate_meter(self, event_name: str = "active_sensors") -> None:
        """Reactivate an archived meter."""
        self._refusals.reactivate_meter(event_name)

    def refused_events(self) -> list[RefusedEvent]:
        """Events answered 200 but refused afterwards (deleted customer, archived meter)."""
        return self._refusals.refused()

    def error_report(self, event_id: str | None = None) -> dict[str, Any] | None:
        """Stripe's error report of the events refused since the last one, or None.

        The full event is registered for ``GET /v2/core/events/{id}``; the thin notification
        Stripe would deliver to an event destination is returned (sign it and POST it).
        """
        event = self._refusals.next_report(self._clock(), event_id)
        if event is None:
            return None
        self.add_v2_event(event)
        return {key: value for key, value in event.items() if key != "data"}

    def set_rate_limit(self, events_per_second: float | None) -> None:
        """Answer 429 beyond this many meter events per second (v1 calls and v2 stream events)."""
        self._faults.set_rate_limit(events_per_second)

    def request_count(self) -> int:
        """Return how many meter-event POSTs arrived, faulted ones included."""
        return self._faults.request_count()

    def reset(self) -> None:
        """Forget events, identifiers, meters seen, faults, latency and the request count."""
        self._log.clear()
        self._faults.reset()
        with self._lock:
            self._error_reports.clear()
        self._sessions.clear()
        self._refusals.clear()

    def inject(self, status: int, times: int = 1, *, message: str | None = None) -> None:
        """Answer the next `times` meter-event POSTs with this HTTP error status."""
        self._faults.inject(status, times, message=message)

    def inject_page(self, status: int, page: bytes, times: int = 1) -> None:
        """Answer the next `times` meter-event POSTs with a raw (non-JSON) page, as a proxy does."""
        self._faults.inject_page(status, page, times)

    def inject_disconnect(self, times: int = 1) -> None:
        """Drop the connection of the next `times` meter-event POSTs without answering."""
        self._faults.inject_disconnect(times)

    def set_latency(self, seconds: float) -> None:
        """Sleep this long before answering every meter-event POST; 0 turns it off."""
        self._faults.set_latency(seconds)

    def _state(self) -> dict[str, Any]:
        return {**self._faults.state(), "events": self._log.count()}

    def _handle(
        self, method: str, path: str, query: str, headers: Message, body: bytes
    ) -> Response | None:
        """Answer one request; None means close the connection without a response."""
        params = dict(parse_qsl(query, keep_blank_values=True))
        try:
            if path.startswith("/_emulator/"):
                return self._control(method, path, body)
            if method == "POST" and path == "/v1/billing/meter_events":
                return self._create_event(headers, body)
            if method == "POST" and path == "/v2/billing/meter_event_stream":
                return self._stream(headers, body)
            if method == "POST" and path == "/v2/billing/meter_event_session":
                return self._create_session(headers)
            if path.startswith(("/v1/", "/v2/")):
                self._authenticate(headers)
                if method == "GET" and path == "/v1/billing/meters":
                    return 200, page(self._meter_list(), params, path), {}
                match = _SUMMARIES_PATH.fullmatch(path)
                if method == "GET" and match:
                    found = summaries(
                        self._meter_list(), self.events(), match.group(1), params, path
                    )
                    return 200, found, {}
                match = _CUSTOMER_PATH.fullmatch(path)
                if method == "GET" and match:
                    return self._refusals.customer(match.group(1), self._clock())
                match = _EVENT_PATH.fullmatch(path)
                if method == "GET" and match:
                    with self._lock:
                        event = self._v2_events.get(match.group(1))
                    if event is None:
                        raise Reply(404, f"No such event: '{match.group(1)}'", code="not_found")
                    return 200, event, {}
            raise Reply(404, f"Unrecognized request URL ({method}: {path}).")
        except Reply as reply:
            return reply.response

    def _authenticate(self, headers: Message) -> None:
        auth = headers.get("Authorization", "")
        key = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else ""
        if not key:
            raise Reply(401, "You did not provide an API key (Authorization: Bearer sk_...).")
        if not _API_KEY.fullmatch(key):
            raise Reply(401, f"Invalid API Key provided: {_mask(key)}")

    def _control(self, method: str, path: str, body: bytes) -> Response:
        """Serve /_emulator/*, so other processes can steer and inspect the emulator."""
        if method == "GET" and path == "/_emulator/events":
            return 200, [asdict(event) for event in self.events()], {}
        if method == "GET" and path == "/_emulator/stats":
            return 200, self._state(), {}
        if method == "POST" and path == "/_emulator/reset":
            self.reset()
            return 200, self._state(), {}
        if method == "POST" and path == "/_emulator/faults":
            self._faults.apply_spec(body)
            return 200, self._state(), {}
        if method == "POST" and path == "/_emulator/error_report":
            return 200, self.error_report() or {}, {}
        raise Reply(404, f"Unrecognized request URL ({method}: {path}).")

    def _create_event(self, headers: Message, body: bytes) -> Response | None:
        """Serve POST /v1/billing/meter_events: faults first, then auth and validation."""
        if not self._faults.admit(1):
            return None
        self._authenticate(headers)
        fields, payload = parse_form(body)
        now = self._clock()
        raw_ts = fields.get("timestamp", str(int(now)))
        check(
            bool(WHOLE_NUMBER.fullmatch(raw_ts)), "Invalid timestamp: not an integer.", "timestamp"
        )
        name, customer = fields.get("event_name", ""), payload.get(self.customer_key, "")
        if self._refusals.refuse_if_needed(fields.get("identifier"), name, customer, now):
            # Stripe answers these as accepted and refuses them in its error report.
            accepted = {"object": "billing.meter_event", "created": int(now), "event_name": name}
            accepted.update(identifier=fields.get("identifier"), livemode=False, payload=payload)
            return 200, {**accepted, "timestamp": int(raw_ts)}, {}
        event = self._log.record(
            fields.get("event_name", ""),
            fields.get("identifier"),
            payload,
            int(raw_ts),
            now,
            headers.get("Idempotency-Key"),
        )
        if event is None:
            problem = f"An event already exists with identifier {fields.get('identifier')}."
            raise Reply(400, problem, "identifier", headers={"Stripe-Should-Retry": "false"})
        answer = {
            "object": "billing.meter_event",
            "created": int(now),
            "event_name": event.event_name,
        }
        answer.update(
            identifier=event.identifier, livemode=False, payload=payload, timestamp=event.timestamp
        )
        return 200, answer, {}

    def _create_session(self, headers: Message) -> Response:
        """Serve POST /v2/billing/meter_event_session: a token for the stream, 15 minutes."""
        self._authenticate(headers)
        return 200, self._sessions.create(), {}

    def _stream(self, headers: Message, body: bytes) -> Response | None:
        """Serve POST /v2/billing/meter_event_stream: up to 100 events, validated afterwards.

        As on Stripe, a malformed event or a repeated identifier does not fail the request: it
        is kept in ``error_reports()`` (Stripe's asynchronous error report) and not recorded.
        """
        auth = headers.get("Authorization", "")
        state = self._sessions.state(auth.removeprefix("Bearer ").strip())
        if state == "unknown":
            raise Reply(401, "Invalid or missing meter event session token.")
        if state == "expired":
            raise Reply(
                401,
                "The meter event session has expired; create a new session.",
                kind="temporary_session_expired",
                code="billing_meter_event_session_expired",
            )
        events = parse_stream_body(body)
        if isinstance(events, str):
            raise Reply(400, events, "events")
        if not self._faults.admit(len(events)):
            return None
        now = self._clock()
        for item in events:
            identifier = item.get("identifier")
            try:
                timestamp = parse_iso(item.get("timestamp", _iso_now(now)))
                check(timestamp is not None, "Invalid timestamp: not ISO 8601.", "timestamp")
                payload = item.get("payload")
                check(isinstance(payload, dict), "Missing required param: payload.", "payload")
                name = str(item.get("event_name", ""))
                customer = str((payload or {}).get(self.customer_key, ""))
                if self._refusals.refuse_if_needed(
                    None if identifier is None else str(identifier), name, customer, now
                ):
                    continue
                kept = self._log.record(
                    str(item.get("event_name", "")),
                    None if identifier is None else str(identifier),
                    {str(k): str(v) for k, v in (payload or {}).items()},
                    int(timestamp or 0),
                    now,
                )
                if kept is None:
                    raise Reply(400, f"An event already exists with identifier {identifier}.")
            except Reply as reply:
                with self._lock:
                    self._error_reports.append(
                        {"identifier": identifier, "error": reply.response[1]["error"]}
                    )
        return 200, {}, {}

    def _meter_list(self) -> list[dict[str, Any]]:
        meters = meter_list(self._log.meters(), self.customer_key, self.value_key)
        for meter in meters:
            if self._refusals.is_archived(meter["event_name"]):
                meter["status"] = "inactive"
        return meters


def _iso_now(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).isoformat()


def serve(host: str, port: int, *, rate_limit: float | None = None, latency: float = 0.0) -> None:
    """Run an emulator in the foreground until SIGINT or SIGTERM."""
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with StripeEmulator(host, port, rate_limit=rate_limit) as emulator:
            emulator.set_latency(latency)
            print(f"Stripe emulator listening on {emulator.base_url}", flush=True)
            while not stop.wait(0.5):  # a bare wait() is not reliably woken by a signal
                pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

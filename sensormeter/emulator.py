"""A local HTTP emulator of Stripe's Billing Meter endpoints, for tests and local runs."""

from __future__ import annotations

import functools
import hashlib
import json
import re
import secrets
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

DEFAULT_METER = "active_sensors"
MAX_PAST_SECONDS = 35 * 86400
MAX_FUTURE_SECONDS = 5 * 60
IDENTIFIER_WINDOW_SECONDS = 24 * 3600
MAX_NAME_LENGTH = 100

_API_KEY = re.compile(r"(sk|rk)_(test|live)_\S+")
_WHOLE_NUMBER = re.compile(r"[0-9]+")
_PAYLOAD_FIELD = re.compile(r"payload\[([^\[\]]+)\]")
_SUMMARIES_PATH = re.compile(r"/v1/billing/meters/([^/]+)/event_summaries")
_WINDOWS = {"hour": 3600, "day": 86400}
_FIELDS = ("event_name", "identifier", "timestamp")

_Response = tuple[int, Any, dict[str, str]]  # status, JSON body, extra headers
_Fault = tuple[int | None, str | None]  # status (None: drop the connection), message


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


class _Reply(Exception):
    """Raised inside a route to answer at once with a Stripe-shaped error."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        *,
        kind: str = "invalid_request_error",
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        error = {"type": kind, "message": message, "param": param, "code": code}
        body = {"error": {key: value for key, value in error.items() if value is not None}}
        self.response: _Response = (status, body, headers or {})


def _check(ok: bool, message: str, param: str | None = None) -> None:
    """Answer 400 invalid_request_error unless a validation rule holds."""
    if not ok:
        raise _Reply(400, message, param)


def _mask(key: str) -> str:
    """Hide all but the ends of an API key, as Stripe does in its error messages."""
    return key[:8] + "*" * (len(key) - 12) + key[-4:] if len(key) >= 12 else "*" * len(key)


def _stable_id(prefix: str, *parts: object) -> str:
    """Derive an id that stays the same across runs for the same inputs."""
    return f"{prefix}_{hashlib.sha256(repr(parts).encode()).hexdigest()[:24]}"


def _int_param(query: Mapping[str, str], name: str) -> int:
    """Read a required whole-number query parameter."""
    raw = query.get(name, "")
    _check(bool(raw), f"Missing required param: {name}.", name)
    _check(bool(_WHOLE_NUMBER.fullmatch(raw)), f"Invalid integer: {raw}", name)
    return int(raw)


def _page(items: list[dict[str, Any]], query: Mapping[str, str], url: str) -> dict[str, Any]:
    """Cut one page out of a list the way Stripe's cursor pagination does (default 10)."""
    raw = query.get("limit", "10")
    limit = int(raw) if _WHOLE_NUMBER.fullmatch(raw) else 0
    _check(1 <= limit <= 100, "Invalid limit: must be between 1 and 100.", "limit")
    start = 0
    if after := query.get("starting_after"):
        ids = [item["id"] for item in items]
        _check(after in ids, f"No such object: '{after}'", "starting_after")
        start = ids.index(after) + 1
    page = items[start : start + limit]
    return {"object": "list", "data": page, "has_more": len(items) > start + limit, "url": url}


class _Handler(BaseHTTPRequestHandler):
    """Translate raw HTTP into calls on the emulator; no API logic lives here."""

    emulator: StripeEmulator  # set on a per-emulator subclass by StripeEmulator.start()

    def log_message(self, format: str, *args: Any) -> None:
        """Stay silent: a line per request would drown test and CLI output."""

    def _dispatch(self) -> None:
        """Serve a request of any method; the emulator's router decides what exists."""
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        # Read the body even when about to drop the connection, so the client sees a clean
        # close rather than a reset while it is still sending.
        body = self.rfile.read(length) if length else b""
        response = self.emulator._handle(self.command, url.path, url.query, self.headers, body)
        if response is None:
            self.close_connection = True
            return
        status, payload, headers = response
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            headers = {"Request-Id": "req_" + secrets.token_hex(8), **headers}
            headers.update({"Content-Type": "application/json", "Content-Length": str(len(data))})
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            # The client stopped waiting (a latency test does this on purpose); nobody to tell.
            self.close_connection = True

    # Every method goes to the router, so an unknown one gets Stripe's JSON 404, not a 501 page.
    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch


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
    ) -> None:
        self.host, self.port = host, port
        self.customer_key, self.value_key = customer_key, value_key
        self._clock = clock
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._created = int(clock())
        self._events: list[ReceivedEvent] = []
        self._identifiers: dict[str, float] = {}
        self._meters: dict[str, int] = {DEFAULT_METER: self._created}
        self._faults: deque[_Fault] = deque()
        self._latency = 0.0
        self._requests = 0

    def start(self) -> StripeEmulator:
        """Bind the port and serve in a daemon thread; returns self."""
        if self._server is not None:
            raise RuntimeError("the emulator is already running")
        self._stopping.clear()
        handler = type("_BoundHandler", (_Handler,), {"emulator": self})
        self._server = ThreadingHTTPServer((self.host, self.port), handler)
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
        with self._lock:
            return list(self._events)

    def request_count(self) -> int:
        """Return how many meter-event POSTs arrived, faulted ones included."""
        with self._lock:
            return self._requests

    def reset(self) -> None:
        """Forget events, identifiers, meters seen, faults, latency and the request count."""
        with self._lock:
            self._events.clear()
            self._identifiers.clear()
            self._meters = {DEFAULT_METER: self._created}
            self._faults.clear()
            self._latency, self._requests = 0.0, 0

    def inject(self, status: int, times: int = 1, *, message: str | None = None) -> None:
        """Answer the next `times` meter-event POSTs with this HTTP error status."""
        if not 400 <= status <= 599:
            raise ValueError(f"status must be an HTTP error status (400-599), got {status}")
        self._queue((status, message), times)

    def inject_disconnect(self, times: int = 1) -> None:
        """Drop the connection of the next `times` meter-event POSTs without answering."""
        self._queue((None, None), times)

    def set_latency(self, seconds: float) -> None:
        """Sleep this long before answering every meter-event POST; 0 turns it off."""
        if seconds < 0:
            raise ValueError(f"latency must not be negative, got {seconds}")
        with self._lock:
            self._latency = float(seconds)

    def _queue(self, fault: _Fault, times: int) -> None:
        if times < 1:
            raise ValueError(f"times must be at least 1, got {times}")
        with self._lock:
            self._faults.extend([fault] * times)

    def _state(self) -> dict[str, Any]:
        with self._lock:
            return {
                "request_count": self._requests,
                "queued_faults": len(self._faults),
                "latency": self._latency,
            }

    def _handle(
        self, method: str, path: str, query: str, headers: Message, body: bytes
    ) -> _Response | None:
        """Answer one request; None means close the connection without a response."""
        params = dict(parse_qsl(query, keep_blank_values=True))
        try:
            if path.startswith("/_emulator/"):
                return self._control(method, path, body)
            if method == "POST" and path == "/v1/billing/meter_events":
                return self._create_event(headers, body)
            if path.startswith(("/v1/", "/v2/")):
                self._authenticate(headers)
                if method == "GET" and path == "/v1/billing/meters":
                    return 200, _page(self._meter_list(), params, path), {}
                match = _SUMMARIES_PATH.fullmatch(path)
                if method == "GET" and match:
                    return 200, self._summaries(match.group(1), params, path), {}
            raise _Reply(404, f"Unrecognized request URL ({method}: {path}).")
        except _Reply as reply:
            return reply.response

    def _authenticate(self, headers: Message) -> None:
        auth = headers.get("Authorization", "")
        key = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else ""
        if not key:
            raise _Reply(401, "You did not provide an API key (Authorization: Bearer sk_...).")
        if not _API_KEY.fullmatch(key):
            raise _Reply(401, f"Invalid API Key provided: {_mask(key)}")

    def _control(self, method: str, path: str, body: bytes) -> _Response:
        """Serve /_emulator/*, so other processes can steer and inspect the emulator."""
        if method == "GET" and path == "/_emulator/events":
            return 200, [asdict(event) for event in self.events()], {}
        if method == "GET" and path == "/_emulator/stats":
            return 200, self._state(), {}
        if method == "POST" and path == "/_emulator/reset":
            self.reset()
            return 200, self._state(), {}
        if method == "POST" and path == "/_emulator/faults":
            try:
                spec = json.loads(body or b"{}")
                keys = {"status", "times", "message", "disconnect", "latency"}
                if not isinstance(spec, dict) or not spec.keys() <= keys:
                    raise ValueError(f"expected a JSON object with keys among {sorted(keys)}")
                if "status" in spec:
                    times, message = int(spec.get("times", 1)), spec.get("message")
                    self.inject(int(spec["status"]), times, message=message)
                if "disconnect" in spec:
                    self.inject_disconnect(int(spec["disconnect"]))
                if "latency" in spec:
                    self.set_latency(float(spec["latency"]))
            except (ValueError, TypeError) as exc:
                raise _Reply(400, f"Invalid fault specification: {exc}") from exc
            return 200, self._state(), {}
        raise _Reply(404, f"Unrecognized request URL ({method}: {path}).")

    def _create_event(self, headers: Message, body: bytes) -> _Response | None:
        """Serve POST /v1/billing/meter_events: faults first, then auth and validation."""
        with self._lock:
            self._requests += 1
            latency = self._latency
            # Take the fault at arrival, so queued faults meet requests in arrival order.
            status, message = self._faults.popleft() if self._faults else (0, None)
        # stop() ends the wait early; a stopping emulator then answers nothing, like a dead host.
        if status is None or (latency and self._stopping.wait(latency)):
            return None
        if status == 429:
            text = message or "Request rate limit exceeded."
            raise _Reply(429, text, kind="rate_limit_error", code="rate_limit")
        if status:
            kind = "api_error" if status >= 500 else "invalid_request_error"
            raise _Reply(status, message or "Injected error.", kind=kind)
        self._authenticate(headers)
        fields, payload = self._parse_form(body)
        now = self._clock()

        name = fields.get("event_name", "")
        _check(bool(name), "Missing required param: event_name.", "event_name")
        _check(len(name) <= MAX_NAME_LENGTH, "Invalid event_name: too long.", "event_name")
        _check(bool(payload), "Missing required param: payload.", "payload")
        customer_param, value_param = f"payload[{self.customer_key}]", f"payload[{self.value_key}]"
        customer, value = payload.get(self.customer_key, ""), payload.get(self.value_key)
        _check(bool(customer), f"Missing required param: {customer_param}.", customer_param)
        _check(value is not None, f"Missing required param: {value_param}.", value_param)
        # A whole number in a string, as Stripe wants; a `last` meter of a count is never < 0.
        problem = f'Invalid {value_param}: {value!r} is not a whole number like "17".'
        _check(bool(_WHOLE_NUMBER.fullmatch(value or "")), problem, value_param)
        raw_ts, ts = fields.get("timestamp", str(int(now))), "timestamp"
        _check(bool(_WHOLE_NUMBER.fullmatch(raw_ts)), "Invalid timestamp: not an integer.", ts)
        timestamp = int(raw_ts)
        _check(timestamp >= now - MAX_PAST_SECONDS, "Invalid timestamp: older than 35 days.", ts)
        _check(
            timestamp <= now + MAX_FUTURE_SECONDS, "Invalid timestamp: over 5 minutes ahead.", ts
        )
        identifier = fields.get("identifier", "evt_" + secrets.token_hex(12))
        problem = f"Invalid identifier: must be 1 to {MAX_NAME_LENGTH} characters."
        _check(0 < len(identifier) <= MAX_NAME_LENGTH, problem, "identifier")
        event = ReceivedEvent(name, identifier, customer, int(value or 0), timestamp, now, payload)
        # Check and record under one lock: of two concurrent repeats exactly one may win.
        with self._lock:
            seen = self._identifiers.get(identifier)
            if seen is not None and now - seen < IDENTIFIER_WINDOW_SECONDS:
                problem = f"An event already exists with identifier {identifier}."
                raise _Reply(400, problem, "identifier", headers={"Stripe-Should-Retry": "false"})
            self._identifiers[identifier] = now
            self._events.append(event)
            self._meters.setdefault(name, int(now))
        answer = {"object": "billing.meter_event", "created": int(now), "event_name": name}
        answer.update(identifier=identifier, livemode=False, payload=payload, timestamp=timestamp)
        return 200, answer, {}

    @staticmethod
    def _parse_form(body: bytes) -> tuple[dict[str, str], dict[str, str]]:
        """Split stripe-python's form encoding into top-level fields and the payload map."""
        fields: dict[str, str] = {}
        payload: dict[str, str] = {}
        for key, value in parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True):
            if match := _PAYLOAD_FIELD.fullmatch(key):
                payload[match.group(1)] = value
            else:  # Stripe rejects what it does not know, nested payload values included
                _check(key in _FIELDS, f"Received unknown parameter: {key}", key)
                fields[key] = value
        return fields, payload

    def _meter_list(self) -> list[dict[str, Any]]:
        """Describe one `last` meter per event name seen, plus the default meter."""
        with self._lock:
            meters = dict(self._meters)
        return [
            {
                "id": _stable_id("mtr", name),
                "object": "billing.meter",
                "event_name": name,
                "display_name": name.replace("_", " ").capitalize(),
                "default_aggregation": {"formula": "last"},
                "customer_mapping": {"event_payload_key": self.customer_key, "type": "by_id"},
                "value_settings": {"event_payload_key": self.value_key},
                "status": "active",
                "livemode": False,
                "created": created,
            }
            for name, created in meters.items()
        ]

    def _summaries(self, meter_id: str, query: Mapping[str, str], url: str) -> dict[str, Any]:
        """Aggregate one customer's events on a meter with the `last` formula, per window."""
        meter = next((m for m in self._meter_list() if m["id"] == meter_id), None)
        if meter is None:
            message = f"No such billing meter: '{meter_id}'"
            raise _Reply(404, message, "id", code="resource_missing")
        customer = query.get("customer", "")
        _check(bool(customer), "Missing required param: customer.", "customer")
        start, end = _int_param(query, "start_time"), _int_param(query, "end_time")
        for param, moment in (("start_time", start), ("end_time", end)):
            _check(moment % 60 == 0, f"Invalid {param}: must be aligned with minutes.", param)
        _check(start < end, "Invalid end_time: must be after start_time.", "end_time")
        grouping = query.get("value_grouping_window")
        size = _WINDOWS.get(grouping or "")
        param = "value_grouping_window"
        _check(grouping is None or size is not None, f"Invalid {param}: hour or day.", param)
        # Stripe documents that grouped queries must start and end on window boundaries.
        _check(
            not size or (start % size == 0 and end % size == 0),
            f"Invalid start_time/end_time: must align with {grouping} boundaries.",
            "start_time",
        )
        latest: dict[int, ReceivedEvent] = {}
        for event in self.events():  # arrival order, so ">=" lets a later arrival win a tie
            if event.event_name != meter["event_name"] or event.customer != customer:
                continue
            if start <= event.timestamp < end:
                window = event.timestamp - event.timestamp % size if size else start
                if window not in latest or event.timestamp >= latest[window].timestamp:
                    latest[window] = event
        windows: list[tuple[int, int, ReceivedEvent | None]]
        if size:  # only windows with events, newest first as Stripe lists them
            windows = [(lo, lo + size, latest[lo]) for lo in sorted(latest, reverse=True)]
        else:  # Stripe documents a single summary for the whole range, even an empty one
            windows = [(start, end, latest.get(start))]
        items = [
            {
                "id": _stable_id("mtrusg", meter_id, customer, lo, hi),
                "object": "billing.meter_event_summary",
                "aggregated_value": float(event.value) if event else 0.0,
                "start_time": lo,
                "end_time": hi,
                "livemode": False,
                "meter": meter_id,
            }
            for lo, hi, event in windows
        ]
        return _page(items, query, url)


def serve(host: str, port: int) -> None:
    """Run an emulator in the foreground until SIGINT or SIGTERM."""
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with StripeEmulator(host, port) as emulator:
            print(f"Stripe emulator listening on {emulator.base_url}", flush=True)
            while not stop.wait(0.5):  # a bare wait() is not reliably woken by a signal
                pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

"""The emulator's HTTP plumbing: raw requests in, the emulator's router, JSON answers out."""

from __future__ import annotations

import json
import re
import secrets
import socket
from email.message import Message
from http.server import BaseHTTPRequestHandler
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

from .replies import Response, check

_PAYLOAD_FIELD = re.compile(r"payload\[([^\[\]]+)\]")
_FIELDS = ("event_name", "identifier", "timestamp")


class Router(Protocol):
    """What the handler needs of the emulator (StripeEmulator): its router and connections."""

    _connections: set[socket.socket]

    def _handle(
        self, method: str, path: str, query: str, headers: Message, body: bytes
    ) -> Response | None: ...


class RequestHandler(BaseHTTPRequestHandler):
    """Translate raw HTTP into calls on the emulator; no API logic lives here."""

    emulator: Router  # set on a per-emulator subclass by StripeEmulator.start()
    # Keep-alive, as Stripe offers: a new TCP connection per event would dominate the cost.
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, the body waits for the client's
    # delayed ACK (40 ms on Linux) and every call looks slow.
    disable_nagle_algorithm = True

    def setup(self) -> None:
        """Register the connection, so stop() can close kept-alive ones."""
        super().setup()
        self.emulator._connections.add(self.connection)

    def finish(self) -> None:
        """Forget the connection."""
        self.emulator._connections.discard(self.connection)
        super().finish()

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
        # A raw page (bytes) goes out as it is, like a proxy's error page; the rest is JSON.
        raw = isinstance(payload, bytes)
        data = payload if raw else json.dumps(payload).encode()
        try:
            self.send_response(status)
            headers = {"Request-Id": "req_" + secrets.token_hex(8), **headers}
            if not raw:
                headers["Content-Type"] = "application/json"
            headers["Content-Length"] = str(len(data))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            # The client stopped waiting (a latency test does this on purpose); nobody to tell.
            self.close_connection = True

    # Every method goes to the router, so an unknown one gets Stripe's JSON 404, not a 501 page.
    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch


def parse_form(body: bytes) -> tuple[dict[str, str], dict[str, str]]:
    """Split stripe-python's form encoding into top-level fields and the payload map."""
    fields: dict[str, str] = {}
    payload: dict[str, str] = {}
    for key, value in parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True):
        if match := _PAYLOAD_FIELD.fullmatch(key):
            payload[match.group(1)] = value
        else:  # Stripe rejects what it does not know, nested payload values included
            check(key in _FIELDS, f"Received unknown parameter: {key}", key)
            fields[key] = value
    return fields, payload

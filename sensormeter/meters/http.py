"""A lean keep-alive HTTP client for stripe-python, one connection per thread and host.

stripe-python's default RequestsClient spends most of a meter event's client CPU inside
requests and urllib3 (measured in docs/performance.md). Meter reporting sends thousands of
small POSTs to one host, which http.client with a kept-alive connection does at a fraction
of that cost. It is plugged in through StripeClient's documented ``http_client=`` option.
"""

from __future__ import annotations

import http.client
import ssl
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import stripe

_Conn = http.client.HTTPConnection


class KeepAliveClient(stripe.HTTPClient):
    """An ``http_client`` for StripeClient: plain http.client, connections kept per thread."""

    name = "sensormeter-keepalive"

    def __init__(self, timeout: float) -> None:
        super().__init__(verify_ssl_certs=True)
        self._timeout = timeout
        self._local = threading.local()
        self._tls = ssl.create_default_context(cafile=stripe.ca_bundle_path)

    def _connections(self) -> dict[tuple[str, str], _Conn]:
        conns: dict[tuple[str, str], _Conn] | None = getattr(self._local, "conns", None)
        if conns is None:
            conns = self._local.conns = {}
        return conns

    def _open(self, scheme: str, netloc: str) -> _Conn:
        if scheme == "https":
            return http.client.HTTPSConnection(netloc, timeout=self._timeout, context=self._tls)
        return http.client.HTTPConnection(netloc, timeout=self._timeout)

    def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        post_data: Any = None,
        *,
        _usage: list[str] | None = None,
    ) -> tuple[str, int, Mapping[str, str]]:
        """Send one request; network failures become stripe.APIConnectionError."""
        parts = urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        body = post_data.encode() if isinstance(post_data, str) else post_data
        key = (parts.scheme, parts.netloc)
        conns = self._connections()
        for attempt in (0, 1):
            reused = key in conns
            conn = conns.get(key) or conns.setdefault(key, self._open(*key))
            try:
                conn.request(method.upper(), target, body=body, headers=dict(headers or {}))
                response = conn.getresponse()
                content = response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                conn.close()
                del conns[key]
                # A kept-alive connection the server had closed: open a new one, once. Resending
                # is safe: every meter event carries its identifier.
                if reused and attempt == 0:
                    continue
                raise self._connection_error(exc) from exc
            except Exception as exc:
                # Not only network errors: http.client raises ValueError for a header value
                # it refuses, and anything raised here must reach the caller as a Stripe
                # error, so it is classified as one event's failure, not the chunk's.
                conn.close()
                del conns[key]
                raise self._connection_error(exc) from exc
            if response.will_close:
                conn.close()
                del conns[key]
            # A proxy's error page may be in any encoding; stripe-python then reports a body
            # that is not JSON as an APIError (retryable), keeping the status.
            text = content.decode("utf-8", errors="replace")
            return text, response.status, {k.lower(): v for k, v in response.getheaders()}
        raise AssertionError("unreachable")

    @staticmethod
    def _connection_error(exc: BaseException) -> stripe.APIConnectionError:
        kind = "timed out" if isinstance(exc, TimeoutError) else type(exc).__name__
        if isinstance(exc, OSError | http.client.HTTPException):
            return stripe.APIConnectionError(f"Network error talking to Stripe ({kind}: {exc})")
        return stripe.APIConnectionError(f"Request to Stripe failed ({kind}: {exc})")

    def close(self) -> None:
        """Close this thread's connections."""
        for conn in self._connections().values():
            conn.close()
        self._connections().clear()

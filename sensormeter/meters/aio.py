"""An asyncio HTTP/1.1 client for stripe-python's async calls: kept-alive connections, no threads.

A v1 report job sends hundreds of small POSTs to one host. Threads with blocking
http.client spent a third of the job's sending CPU on thread hand-offs and on http.client's
header parsing through the email package (docs/performance.md, "v1 CPU per report"). Here
one event loop per process drives every request of a job over a pool of kept-alive
connections, and a response is parsed with a few bytes operations. It is plugged in through
StripeClient's documented ``http_client=`` option; stripe-python's synchronous calls (the v2
stream, one-off sends) keep using :class:`~sensormeter.meters.http.KeepAliveClient`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import stripe

from .http import KeepAliveClient

_NO_BODY_STATUSES = frozenset({204, 304})


class _Dropped(ConnectionError):
    """Raised when the server closed the connection before a whole answer arrived."""

    def __init__(self, answered: bool) -> None:
        super().__init__("Remote end closed connection without response")
        self.answered = answered  # some of an answer had arrived: never resend blindly


class _Connection(asyncio.Protocol):
    """One kept-alive connection; answers one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._buffer = bytearray()
        self._waiter: asyncio.Future[tuple[int, dict[str, str], bytes, bool]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport (asyncio calls this)."""
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        """Collect bytes; complete the waiting request once its answer is whole."""
        self._buffer += data
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        try:
            answer = _parse(self._buffer, closed=False)
        except Exception as exc:  # noqa: BLE001 (a malformed answer fails this request only)
            waiter.set_exception(exc)
            return
        if answer is not None:
            self._buffer.clear()
            waiter.set_result(answer)

    def connection_lost(self, exc: Exception | None) -> None:
        """Fail (or, for an answer delimited by the close, complete) the waiting request."""
        self.closed = True
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        answer = None
        try:
            answer = _parse(self._buffer, closed=True) if self._buffer else None
        except Exception as error:  # noqa: BLE001
            waiter.set_exception(error)
            return
        if answer is not None:
            waiter.set_result(answer)
        else:
            waiter.set_exception(_Dropped(answered=bool(self._buffer)))

    async def exchange(
        self, request: bytes, timeout: float
    ) -> tuple[int, dict[str, str], bytes, bool]:
        """Write one request and wait for its whole answer, at most ``timeout`` seconds."""
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[tuple[int, dict[str, str], bytes, bool]] = loop.create_future()
        self._waiter = waiter
        # A timer on the waiter, not asyncio.wait_for: that wraps every request in a task.
        timer = loop.call_later(timeout, _expire, waiter)
        self._buffer.clear()
        self.transport.write(request)
        try:
            return await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def close(self) -> None:
        """Close the connection (no effect when already closed)."""
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def _expire(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("timed out"))


def _parse(buffer: bytearray, *, closed: bool) -> tuple[int, dict[str, str], bytes, bool] | None:
    """The (status, lower-cased headers, body, keep-alive) of a whole answer, or None yet."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = bytes(buffer[:end]).decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    status = int(rest[:3])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    keep_alive = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
    start = end + 4
    if status in _NO_BODY_STATUSES or 100 <= status < 200:
        return status, headers, b"", keep_alive
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = _dechunk(buffer, start)
        return None if body is None else (status, headers, body, keep_alive)
    length = headers.get("content-length")
    if length is not None:
        size = int(length)
        if len(buffer) - start < size:
            return None
        return status, headers, bytes(buffer[start : start + size]), keep_alive
    # No length: the answer ends when the server closes the connection.
    return (status, headers, bytes(buffer[start:]), False) if closed else None


def _dechunk(buffer: bytearray, position: int) -> bytes | None:
    """A chunked body from ``position``, or None while it is incomplete."""
    body = bytearray()
    while True:
        line_end = buffer.find(b"\r\n", position)
        if line_end < 0:
            return None
        size = int(bytes(buffer[position:line_end]).split(b";")[0], 16)
        position = line_end + 2
        if size == 0:
            return bytes(body) if buffer.find(b"\r\n", position) >= 0 else None
        if len(buffer) < position + size + 2:
            return None
        body += buffer[position : position + size]
        position += size + 2


def _request_bytes(
    method: str, target: str, host: str, headers: Mapping[str, str], body: bytes
) -> bytes:
    """The request's bytes; a header name or value with CR or LF is refused (ValueError)."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    for name, value in headers.items():
        text = str(value)
        if "\r" in text or "\n" in text or "\r" in name or "\n" in name or ":" in name:
            # As http.client: a header must never smuggle another header or request in.
            raise ValueError(f"Invalid header value {text!r}")
        lines.append(f"{name}: {text}")
    lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head + body


class AsyncKeepAliveClient(KeepAliveClient):
    """An ``http_client`` for StripeClient whose ``request_async`` runs on asyncio.

    Connections are kept per event loop and host; a connection the server had closed is
    replaced once, transparently (resending is safe: every meter event carries its
    identifier). Synchronous calls go through :class:`KeepAliveClient`.
    """

    name = "sensormeter-asyncio"

    def __init__(self, timeout: float) -> None:
        super().__init__(timeout)
        self._idle: dict[tuple[str, str], list[_Connection]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def _pool(self) -> dict[tuple[str, str], list[_Connection]]:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # connections belong to the loop that made them
            self._idle, self._loop = {}, loop
        return self._idle

    async def _connect(self, scheme: str, netloc: str) -> _Connection:
        parts = urlsplit(f"{scheme}://{netloc}")
        tls = self._tls if scheme == "https" else None
        host, port = parts.hostname or "", parts.port or (443 if tls else 80)
        loop = asyncio.get_running_loop()
        _, connection = await loop.create_connection(
            _Connection,
            host,
            port,
            ssl=tls,
            server_hostname=host if tls else None,
        )
        return connection

    async def request_async(  # type: ignore[override]  # a str body, as the sync client's
        self, method: str, url: str, headers: Mapping[str, str] | None, post_data: Any = None
    ) -> tuple[str, int, Mapping[str, str]]:
        """Send one request on a kept-alive connection; failures become APIConnectionError."""
        try:
            return await self._request(method, url, headers, post_data)
        except stripe.APIConnectionError:
            raise
        except Exception as exc:
            # Not only network errors: a header value refused (ValueError) must reach the
            # caller as a Stripe error, so it is classified as one event's failure.
            raise self._connection_error(exc) from exc

    async def _request(
        self, method: str, url: str, headers: Mapping[str, str] | None, post_data: Any
    ) -> tuple[str, int, Mapping[str, str]]:
        parts = urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        body = post_data.encode() if isinstance(post_data, str) else (post_data or b"")
        request = _request_bytes(method.upper(), target, parts.netloc, headers or {}, body)
        key = (parts.scheme, parts.netloc)
        idle = self._pool().setdefault(key, [])
        for attempt in (0, 1):
            connection = None
            while idle and connection is None:
                candidate = idle.pop()
                connection = None if candidate.closed else candidate
            reused = connection is not None
            if connection is None:
                connection = await asyncio.wait_for(self._connect(*key), self._timeout)
            try:
                status, answer_headers, content, keep_alive = await connection.exchange(
                    request, self._timeout
                )
            except _Dropped as exc:
                connection.close()
                # A kept-alive connection the server had closed: a new one, once.
                if reused and attempt == 0 and not exc.answered:
                    continue
                raise
            except BaseException:
                connection.close()  # half-used (a timeout, a cancellation): never reused
                raise
            if keep_alive and not connection.closed:
                idle.append(connection)
            else:
                connection.close()
            # A proxy's error page may be in any encoding; stripe-python then reports a body
            # that is not JSON as an APIError (retryable), keeping the status.
            return content.decode("utf-8", errors="replace"), status, answer_headers
        raise AssertionError("unreachable")

    def sleep_async(self, secs: float) -> Any:
        """Sleep on the running loop (stripe-python's retries; ours are off)."""
        return asyncio.sleep(secs)

    async def close_async(self) -> None:
        """Close this loop's idle connections."""
        for connections in self._pool().values():
            for connection in connections:
                connection.close()
        self._idle.clear()

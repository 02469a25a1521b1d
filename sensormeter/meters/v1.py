"""Stripe's v1 meter events: one validated call per event, many in flight on one event loop.

A job's events go out through stripe-python's async API (``raw_request_async``) on an
asyncio HTTP client (aio.py): one event loop per process, kept-alive connections, no
threads. How many are in flight is fixed or follows the measured latency (inflight.py).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from ..settings import Settings
from .aio import AsyncKeepAliveClient
from .base import (
    MeterEvent,
    Outcome,
    SendResult,
    classify_error,
    make_http_client,
    make_stripe_client,
    rounds_by_customer,
)
from .inflight import InFlight, WindowMemory
from .ratelimit import NoRateLimit, RateLimiter, send_limited, send_limited_async

PATH = "/v1/billing/meter_events"


class StripeMeterClient:
    """POST /v1/billing/meter_events through stripe-python (Stripe, or the emulator)."""

    def __init__(
        self,
        settings: Settings,
        limiter: RateLimiter | None = None,
        *,
        memory: WindowMemory | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.http = make_http_client(settings, asynchronous=True)
        self.client = make_stripe_client(settings, self.http)
        # Through a proxy the requests go on stripe-python's requests-based client, in threads.
        self._threads = None if isinstance(self.http, AsyncKeepAliveClient) else _Threads()
        self.customer_key = settings.customer_payload_key
        self.value_key = settings.value_payload_key
        self.max_in_flight = settings.max_in_flight  # 0: auto
        self.limiter = limiter or NoRateLimit()
        self.memory = memory
        self._clock = clock
        # One loop per thread and process: a host app may share the client between threads.
        self._local = threading.local()
        self.in_flight = self._window()

    def _window(self) -> InFlight:
        """A fixed window, or an adaptive one starting where the last job's ended."""
        if self.max_in_flight:
            return InFlight(self.max_in_flight)
        kept = self.memory.load() if self.memory is not None else None
        return InFlight() if kept is None else InFlight(start=kept[0], base=kept[1])

    def _params(self, event: MeterEvent) -> dict[str, object]:
        return {
            "event_name": event.event_name,
            "identifier": event.identifier,
            "timestamp": event.timestamp,
            "payload": {self.customer_key: event.customer, self.value_key: str(event.value)},
        }

    def _attempt(self, event: MeterEvent) -> SendResult:
        """One POST; whatever goes wrong (not only a StripeError) becomes the event's outcome."""
        try:
            # The idempotency key is the identifier too: whichever of the two Stripe's
            # asynchronous error reports quote, it names the ledger row.
            response = self.client.raw_request(
                "post", PATH, **self._params(event), idempotency_key=event.identifier
            )
        except Exception as exc:  # noqa: BLE001 (one event's failure must not sink the chunk)
            return classify_error(exc)
        return SendResult(Outcome.DELIVERED, request_id=response.request_id)

    async def _attempt_async(self, event: MeterEvent) -> SendResult:
        """:meth:`_attempt` on the event loop; its latency feeds the in-flight window."""
        if self._threads is not None:
            return await self._threads.run(self._attempt, event, self.in_flight.cap)
        started = self._clock()
        try:
            response = await self.client.raw_request_async(
                "post", PATH, **self._params(event), idempotency_key=event.identifier
            )
        except Exception as exc:  # noqa: BLE001 (one event's failure must not sink the chunk)
            result = classify_error(exc)
        else:
            result = SendResult(Outcome.DELIVERED, request_id=response.request_id)
        if result.http_status == 429:
            self.in_flight.throttle()
        elif result.http_status is not None or result.outcome.delivered:
            # Only answers measure the path; a timeout or a refused header says nothing.
            self.in_flight.observe(self._clock() - started)
        return result

    def send(self, event: MeterEvent) -> SendResult:
        """Send one event within the shared limit (a 429 is retried a few times); never raises."""
        return send_limited(self.limiter, 1, lambda: [self._attempt(event)])[0]

    async def _send_async(self, event: MeterEvent) -> SendResult:
        return (await send_limited_async(self.limiter, 1, lambda: self._one(event)))[0]

    async def _one(self, event: MeterEvent) -> list[SendResult]:
        return [await self._attempt_async(event)]

    def send_many(self, events: Sequence[MeterEvent]) -> list[SendResult]:
        """Send with up to the in-flight window's calls at once, never two for one customer.

        Never raises for an event: an event whose sending failed in any way gets a retryable
        outcome. A BaseException (RQ's shutdown or job timeout) stops the sending and
        propagates; the events not answered stay pending in the ledger.
        """
        results: list[SendResult] = [_NOT_SENT] * len(events)
        if not events:
            return results
        if _loop_running():
            # Called from a host app's own event loop: ours runs in a thread beside it.
            with ThreadPoolExecutor(1, thread_name_prefix="meter-v1") as pool:
                return pool.submit(self.send_many, events).result()
        loop = self._event_loop()
        self.in_flight.restart()
        try:
            loop.run_until_complete(self._send_rounds(events, results))
        except BaseException:
            self._abandon(loop)
            raise
        if self.memory is not None and not self.max_in_flight:
            self.memory.save(self.in_flight.window, self.in_flight.base)
        return results

    async def _send_rounds(self, events: Sequence[MeterEvent], results: list[SendResult]) -> None:
        for positions in rounds_by_customer(events):

            async def send(position: int) -> None:
                results[position] = await self._send_async(events[position])

            await run_window(positions, send, self.in_flight)

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        """This thread's loop, made on first use (and again after a fork: never shared)."""
        loop: asyncio.AbstractEventLoop | None = getattr(self._local, "loop", None)
        if loop is None or self._local.pid != os.getpid() or loop.is_closed():
            loop = self._local.loop = asyncio.new_event_loop()
            self._local.pid = os.getpid()
        return loop

    def _abandon(self, loop: asyncio.AbstractEventLoop) -> None:
        """After an interruption: cancel what is left and start afresh next time."""
        self._local.loop = None
        try:
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            if tasks and not loop.is_running():
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.close()
        except BaseException:  # noqa: BLE001 (the interruption that got us here wins)
            pass

    def close(self) -> None:
        """Close the event loop and its connections."""
        loop: asyncio.AbstractEventLoop | None = getattr(self._local, "loop", None)
        self._local.loop = None
        if loop is not None and self._local.pid == os.getpid() and not loop.is_closed():
            if isinstance(self.http, AsyncKeepAliveClient):
                loop.run_until_complete(self.http.close_async())
            loop.close()
        if self._threads is not None:
            self._threads.close()


class _Threads:
    """A thread pool for a blocking HTTP client (through a proxy), made on first use."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None

    async def run(
        self, attempt: Callable[[MeterEvent], SendResult], event: MeterEvent, size: int
    ) -> SendResult:
        """Run ``attempt(event)`` in a thread, waited for on the loop."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(size, thread_name_prefix="meter-v1")
        return await asyncio.get_running_loop().run_in_executor(self._pool, attempt, event)

    def close(self) -> None:
        """Let the threads go."""
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


async def run_window(
    items: Sequence[int], handle: Callable[[int], Awaitable[None]], in_flight: InFlight
) -> None:
    """``handle`` every item, at most ``in_flight.size`` at once, read again as it changes.

    ``handle`` must not raise an Exception; a BaseException (a cancellation, RQ's shutdown)
    raised inside it stops the window and goes on from here.
    """
    todo = deque(items)
    workers: set[asyncio.Future[None]] = set()

    async def worker(item: int) -> None:
        try:
            while True:
                await handle(item)
                if not todo or len(workers) > in_flight.size:
                    return  # nothing left, or the window shrank: this slot closes
                item = todo.popleft()
                grow()
        finally:
            workers.discard(asyncio.current_task())

    def grow() -> None:
        while todo and len(workers) < in_flight.size:
            workers.add(asyncio.ensure_future(worker(todo.popleft())))

    grow()
    while workers:
        done, _ = await asyncio.wait(list(workers), return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()  # re-raises what stopped a worker (never an Exception from handle)


_NOT_SENT = SendResult(Outcome.RETRYABLE, "not sent")

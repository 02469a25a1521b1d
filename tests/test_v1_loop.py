"""The v1 transport's event loop: through a proxy, after a fork, after an interruption."""

from __future__ import annotations

import time

import pytest

from sensormeter.emulator import StripeEmulator
from sensormeter.meters import StripeMeterClient
from sensormeter.meters.base import MeterEvent, Outcome
from sensormeter.settings import Settings


def event(i: int) -> MeterEvent:
    return MeterEvent(f"loop-{i}", "active_sensors", f"cus_{i}", i, int(time.time()))


def settings(emulator: StripeEmulator, **overrides: object) -> Settings:
    return Settings(
        stripe_api_key="sk_test_x",
        stripe_api_base=emulator.base_url,
        stripe_timeout_seconds=2,
        **overrides,  # type: ignore[arg-type]
    )


def test_through_a_proxy_that_refuses_every_event_is_retryable(emulator: StripeEmulator) -> None:
    """Behind HTTPS_PROXY the requests go on stripe-python's requests client, in threads; a
    proxy that is down makes each event retryable, and nothing escapes send_many."""
    client = StripeMeterClient(settings(emulator, https_proxy="http://127.0.0.1:1"))
    results = client.send_many([event(i) for i in range(5)])
    assert {r.outcome for r in results} == {Outcome.RETRYABLE}
    assert all((r.error or "").startswith("APIConnectionError") for r in results)
    assert emulator.events() == []
    client.close()


def test_the_loop_and_its_connections_serve_several_chunks(emulator: StripeEmulator) -> None:
    """A second chunk in the same process reuses the loop; both are delivered once each."""
    client = StripeMeterClient(settings(emulator))
    first = client.send_many([event(i) for i in range(10)])
    loop = client._event_loop()
    second = client.send_many([event(i) for i in range(10, 20)])
    assert client._event_loop() is loop
    assert {r.outcome for r in first + second} == {Outcome.DELIVERED}
    assert all((r.request_id or "").startswith("req_") for r in first + second)
    assert sorted(e.identifier for e in emulator.events()) == sorted(f"loop-{i}" for i in range(20))
    client.close()


def test_after_a_fork_the_child_makes_its_own_loop(emulator: StripeEmulator) -> None:
    """The parent's loop (and its sockets) is never used from another process."""
    client = StripeMeterClient(settings(emulator))
    client.send_many([event(1)])
    parent = client._event_loop()
    client._local.pid = -1  # as seen from a forked work-horse
    assert [r.outcome for r in client.send_many([event(2)])] == [Outcome.DELIVERED]
    assert client._event_loop() is not parent
    assert parent is not None and not parent.is_closed()  # the parent's, left alone
    client.close()


def test_an_interruption_propagates_and_the_next_chunk_starts_clean(
    emulator: StripeEmulator,
) -> None:
    """A BaseException inside sending (RQ's shutdown, a job timeout) is never swallowed; the
    events not answered stay unsent, and the client works again afterwards."""

    class Shutdown(BaseException):
        pass

    client = StripeMeterClient(settings(emulator))
    emulator.set_latency(0.2)
    calls = 0
    real = client.limiter.acquire

    def acquire(count: int = 1) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise Shutdown
        real(count)

    client.limiter.acquire = acquire  # type: ignore[method-assign]
    with pytest.raises(Shutdown):
        client.send_many([event(i) for i in range(6)])
    client.limiter.acquire = real  # type: ignore[method-assign]
    emulator.set_latency(0)
    assert {r.outcome for r in client.send_many([event(i) for i in range(6, 9)])} == {
        Outcome.DELIVERED
    }
    client.close()


def test_called_from_a_running_event_loop_or_threads(emulator: StripeEmulator) -> None:
    """A host app may call it from its own asyncio code, or from several threads at once."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    client = StripeMeterClient(settings(emulator))

    async def host() -> list[Outcome]:
        return [r.outcome for r in client.send_many([event(100), event(101)])]

    assert asyncio.run(host()) == [Outcome.DELIVERED] * 2
    with ThreadPoolExecutor(3) as pool:
        chunks = [[event(200 + 10 * t + i) for i in range(5)] for t in range(3)]
        answers = list(pool.map(client.send_many, chunks))
    assert {r.outcome for chunk in answers for r in chunk} == {Outcome.DELIVERED}
    assert len(emulator.events()) == 17
    client.close()

"""Batched and concurrent sending: mixed outcomes in a chunk, the v2 stream, the shared limit."""

from __future__ import annotations

import time
from collections import Counter

import pytest
from rq import SimpleWorker
from rq.serializers import JSONSerializer

from sensormeter import report_all_sensor_counts
from sensormeter.emulator import StripeEmulator
from sensormeter.meters import StripeMeterClient, StripeStreamClient
from sensormeter.meters.base import MeterEvent, Outcome, rounds_by_customer
from sensormeter.models import MeterReport
from sensormeter.runtime import Runtime, set_runtime
from sensormeter.settings import Settings
from sensormeter.tasks.queue import JSONJob, make_queue

from .factories import make_org


def work(rt: Runtime) -> None:
    queue = make_queue(rt.settings, rt.redis)
    SimpleWorker([queue], connection=rt.redis, serializer=JSONSerializer, job_class=JSONJob).work(
        burst=True
    )


def events(n: int, customers: int | None = None) -> list[MeterEvent]:
    now = int(time.time())
    return [
        MeterEvent(f"ev-{i}", "active_sensors", f"cus_{i % (customers or n)}", i, now)
        for i in range(n)
    ]


def test_rounds_never_hold_a_customer_twice() -> None:
    """Events of one customer go to successive rounds, in their original order."""
    evs = events(7, customers=3)
    rounds = rounds_by_customer(evs)
    for positions in rounds:
        assert len({evs[p].customer for p in positions}) == len(positions)
    assert sorted(p for r in rounds for p in r) == list(range(7))
    firsts = [p for r in rounds for p in r if evs[p].customer == "cus_0"]
    assert firsts == sorted(firsts)


@pytest.mark.parametrize("transport", ["v1", "v2"])
def test_chunk_mixing_delivered_rejected_and_retried(
    runtime: Runtime, emulator: StripeEmulator, transport: str
) -> None:
    """In one concurrent chunk: a 400 is rejected, a 429 tried again in the job, the rest sent."""
    settings = runtime.settings.with_overrides(transport=transport, max_in_flight=4)
    rt = Runtime.build(settings)
    set_runtime(rt)
    for i in range(12):
        make_org(f"org{i:02d}", active=i)
    emulator.inject(400, times=1, message="No such customer")
    emulator.inject(429, times=1)
    report_all_sensor_counts()
    work(rt)
    statuses = Counter(r.status for r in MeterReport.select())
    if transport == "v1":
        # Each event is its own request: exactly one rejected; the 429'd one is tried again
        # inside the same job attempt (one more request) and sent.
        assert statuses == {"sent": 11, "rejected": 1}
        rejected = MeterReport.get(MeterReport.status == "rejected")
        assert rejected.last_error == "No such customer"
        assert rejected.stripe_request_id.startswith("req_")
        assert max(r.attempts for r in MeterReport.select()) == 1
        assert emulator.request_count() == 13
    else:
        # One batch per request: the 400 rejects the whole first batch of 12 events.
        assert statuses == {"rejected": 12}
    sent = {r.identifier for r in MeterReport.select().where(MeterReport.status == "sent")}
    assert {e.identifier for e in emulator.events()} == sent
    rt.close()


def test_v2_stream_delivers_a_fanout(runtime: Runtime, emulator: StripeEmulator) -> None:
    """With SENSORMETER_TRANSPORT=v2, 250 organizations go out in batches of at most 100."""
    rt = Runtime.build(runtime.settings.with_overrides(transport="v2", chunk_size=250))
    set_runtime(rt)
    for i in range(250):
        make_org(f"o{i:03d}", active=i % 7)
    report_all_sensor_counts()
    work(rt)
    assert len(emulator.events()) == 250
    assert emulator.request_count() == 3  # 100 + 100 + 50
    assert Counter(r.status for r in MeterReport.select()) == {"sent": 250}
    rt.close()


def test_v2_session_is_renewed_after_expiry(emulator: StripeEmulator) -> None:
    """A 401 session-expired answer renews the session and resends the same batch."""
    emulator.stop()
    with StripeEmulator(session_ttl=0.3) as short:
        settings = Settings(stripe_api_key="sk_test_x", stripe_api_base=short.base_url)
        client = StripeStreamClient(settings, renew_margin=0)
        assert [r.outcome for r in client.send_many(events(3))] == [Outcome.DELIVERED] * 3
        time.sleep(0.4)
        assert [r.outcome for r in client.send_many(events(5)[3:])] == [Outcome.DELIVERED] * 2
        assert client.sessions_created == 2
        assert len(short.events()) == 5


def test_v2_session_renewed_before_it_runs_out(emulator: StripeEmulator) -> None:
    """A session within the renewal margin of its expiry is replaced before use, with no 401."""
    settings = Settings(stripe_api_key="sk_test_x", stripe_api_base=emulator.base_url)
    clock = [time.time()]
    client = StripeStreamClient(settings, clock=lambda: clock[0])
    client.send_many(events(1))
    clock[0] += 15 * 60 - 30  # 30 s before expiry: inside the 60 s margin
    client.send_many(events(2)[1:])
    assert client.sessions_created == 2
    assert len(emulator.events()) == 2


def test_v1_sends_concurrently_in_order_per_customer(emulator: StripeEmulator) -> None:
    """Several in flight, results in input order, and one customer's events arrive in order."""
    settings = Settings(
        stripe_api_key="sk_test_x", stripe_api_base=emulator.base_url, max_in_flight=8
    )
    emulator.set_latency(0.05)
    evs = events(16, customers=4)
    started = time.monotonic()
    results = StripeMeterClient(settings).send_many(evs)
    elapsed = time.monotonic() - started
    assert all(r.outcome is Outcome.DELIVERED for r in results)
    per_customer = [e.identifier for e in emulator.events() if e.customer == "cus_1"]
    assert per_customer == [e.identifier for e in evs if e.customer == "cus_1"]
    assert elapsed < 16 * 0.05  # not one after another (4 rounds of 4 in parallel)


class TestRateLimitDefaults:
    def test_fits_the_key(self) -> None:
        """Unset, the limit is 90% of Stripe's ceiling for the key's mode and transport."""
        assert Settings(stripe_api_key="sk_live_x").effective_rate_limit() == 900
        assert Settings(stripe_api_key="sk_live_x", transport="v2").effective_rate_limit() == 9000
        assert Settings(stripe_api_key="sk_test_x").effective_rate_limit() == 22

    def test_emulator_and_explicit_values(self) -> None:
        """Pointed at the emulator there is none unless set; 0 turns it off."""
        emu = Settings(stripe_api_key="sk_test_x", stripe_api_base="http://127.0.0.1:1")
        assert emu.effective_rate_limit() is None
        assert emu.with_overrides(rate_limit=500).effective_rate_limit() == 500
        assert Settings(stripe_api_key="sk_live_x", rate_limit=0).effective_rate_limit() is None

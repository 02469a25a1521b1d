"""Stripe misbehaving for a while: rate limits, server errors, timeouts, slow answers."""

from __future__ import annotations

import threading

import pytest

from sensormeter.emulator import StripeEmulator
from sensormeter.settings import Settings
from sensormeter.tasks.fanout import enqueue_fanout

from .conftest import assert_billed_exactly_once, current_hour, run_cli, seed


def heal_after(seconds: float, action: object) -> threading.Timer:
    timer = threading.Timer(seconds, action)  # type: ignore[arg-type]
    timer.start()
    return timer


@pytest.mark.parametrize(
    "fault",
    ["rate-limited", "server-errors", "dropped-connections", "timeouts", "slow"],
)
def test_stripe_fault_heals_into_exactly_one_event_per_hour(
    fault_settings: Settings, fault_db: object, emulator: StripeEmulator, fault: str
) -> None:
    """Whatever Stripe does for a while, each organization ends with one event for the hour."""
    import redis

    customers = seed(12)
    hour = current_hour()
    timer = None
    if fault == "rate-limited":
        emulator.inject(429, times=8)
    elif fault == "server-errors":
        emulator.inject(503, times=4)
        emulator.inject(500, times=4)
    elif fault == "dropped-connections":
        emulator.inject_disconnect(times=6)
    elif fault == "timeouts":
        emulator.set_latency(3)  # above the 2 s client timeout; the emulator still records
        timer = heal_after(4, lambda: emulator.set_latency(0))
    else:
        emulator.set_latency(0.4)  # slow, within the timeout
    enqueue_fanout(fault_settings, redis.Redis.from_url(fault_settings.redis_url), hour)
    done = run_cli(fault_settings, "worker", "-n", "2", "--burst", timeout=180)
    if timer is not None:
        timer.join()
    assert done.returncode == 0, done.stderr[-3000:]
    assert_billed_exactly_once(emulator, customers, hour)

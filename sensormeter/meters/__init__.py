"""Implementations of :class:`sensormeter.meter.MeterClient`: Stripe v1, Stripe v2, in memory."""

from __future__ import annotations

import redis

from ..meter import MeterClient
from ..ratelimit import NoRateLimit, RateLimiter, RedisRateLimiter
from ..settings import Settings
from .memory import InMemoryMeterClient
from .v1 import StripeMeterClient
from .v2 import StripeStreamClient


def make_rate_limiter(settings: Settings, connection: redis.Redis) -> RateLimiter:
    """The shared limit for the settings' key, or none (emulator, or a limit set to 0)."""
    rate = settings.effective_rate_limit()
    if not rate:
        return NoRateLimit()
    key = f"sensormeter:ratelimit:{settings.stripe_mode}:{settings.transport}"
    return RedisRateLimiter(connection, rate, key)


def make_meter_client(settings: Settings, connection: redis.Redis) -> MeterClient:
    """The transport the settings select (v1 by default), with the shared rate limit."""
    limiter = make_rate_limiter(settings, connection)
    if settings.transport == "v2":
        return StripeStreamClient(settings, limiter)
    return StripeMeterClient(settings, limiter)


__all__ = [
    "InMemoryMeterClient",
    "StripeMeterClient",
    "StripeStreamClient",
    "make_meter_client",
    "make_rate_limiter",
]

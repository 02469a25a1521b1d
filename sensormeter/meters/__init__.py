"""Implementations of :class:`sensormeter.meter.MeterClient`: Stripe v1, Stripe v2, in memory."""

from __future__ import annotations

import redis

from ..keys import LimiterKeys
from ..settings import Settings
from .base import MeterClient
from .inflight import RedisWindowMemory
from .limiter_store import RedisLimiterStore
from .memory import InMemoryMeterClient
from .ratelimit import AdaptiveRateLimiter, RateLimiter
from .v1 import StripeMeterClient
from .v2 import StripeStreamClient


def make_rate_limiter(settings: Settings, connection: redis.Redis) -> RateLimiter:
    """The shared limit of the settings' Stripe mode and transport, adapting to 429s.

    The configured limit (or the one that fits the key) is its ceiling; with none (the
    emulator, or SENSORMETER_RATE_LIMIT=0), nothing is limited until Stripe answers a 429.
    """
    keys = LimiterKeys(f"{settings.stripe_mode}:{settings.transport}")
    return AdaptiveRateLimiter(
        RedisLimiterStore(connection, keys), settings.effective_rate_limit(), name=keys.scope
    )


def make_meter_client(settings: Settings, connection: redis.Redis) -> MeterClient:
    """The transport the settings select (v1 by default), with the shared rate limit."""
    limiter = make_rate_limiter(settings, connection)
    if settings.transport == "v2":
        return StripeStreamClient(settings, limiter)
    keys = LimiterKeys(f"{settings.stripe_mode}:{settings.transport}")
    return StripeMeterClient(
        settings, limiter, memory=RedisWindowMemory(connection, keys.in_flight)
    )


__all__ = [
    "InMemoryMeterClient",
    "StripeMeterClient",
    "StripeStreamClient",
    "make_meter_client",
    "make_rate_limiter",
]

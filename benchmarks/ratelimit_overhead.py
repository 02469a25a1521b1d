"""CPU per event of the shared rate limit while no limit is in force, before and after it adapted.

"before": what a transport did per event when no limit applied (``NoRateLimit.acquire``, then
the request). "after": ``send_limited`` around the same request with the adaptive limiter on
a real Redis and no limit in force (the state read from Redis at most every REFRESH_SECONDS).
The request itself is a stub, so the figures are the limiter's share only. Also prints the
CPU of one refresh (a Redis round trip) and its share per event at a given per-process rate.

    python benchmarks/ratelimit_overhead.py --events 300000 --events-per-second 900
"""

from __future__ import annotations

import argparse
import time

import redis

from sensormeter.keys import LimiterKeys
from sensormeter.meters.base import Outcome, SendResult
from sensormeter.meters.limiter_store import RedisLimiterStore
from sensormeter.meters.ratelimit import (
    REFRESH_SECONDS,
    AdaptiveRateLimiter,
    NoRateLimit,
    send_limited,
)

DELIVERED = SendResult(Outcome.DELIVERED)


def request() -> SendResult:
    return DELIVERED


def before(events: int) -> float:
    limiter = NoRateLimit()
    started = time.process_time()
    for _ in range(events):
        limiter.acquire(1)
        request()
    return time.process_time() - started


def after(limiter: AdaptiveRateLimiter, events: int) -> float:
    started = time.process_time()
    for _ in range(events):
        send_limited(limiter, 1, lambda: [request()])
    return time.process_time() - started


def refresh_cpu(limiter: AdaptiveRateLimiter, count: int) -> float:
    """CPU seconds of one refresh (INCRBY of the accepted count + HMGET of the state)."""
    started = time.process_time()
    for _ in range(count):
        limiter.accepted(10)
        limiter._synced_at = float("-inf")  # force the refresh
        limiter.acquire(1)
    return (time.process_time() - started) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--events-per-second", type=float, default=900.0, help="per process")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/12")
    args = parser.parse_args()
    connection = redis.Redis.from_url(args.redis)
    connection.flushdb()
    limiter = AdaptiveRateLimiter(RedisLimiterStore(connection, LimiterKeys("bench:v1")))
    best_before = min(before(args.events) for _ in range(3))
    best_after = min(after(limiter, args.events) for _ in range(3))
    assert limiter.rate is None
    sync = refresh_cpu(limiter, 2000)
    per_event_sync = sync / (args.events_per_second * REFRESH_SECONDS)
    figures = {
        "before_us_per_event": best_before / args.events * 1e6,
        "after_us_per_event": best_after / args.events * 1e6,
        "refresh_us": sync * 1e6,
        "refresh_share_us_per_event": per_event_sync * 1e6,
    }
    figures["added_us_per_event"] = (
        figures["after_us_per_event"]
        - figures["before_us_per_event"]
        + figures["refresh_share_us_per_event"]
    )
    for key, value in figures.items():
        print(f"{key:<28} {value:.2f}")


if __name__ == "__main__":
    main()

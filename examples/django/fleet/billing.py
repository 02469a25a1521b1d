"""The web process's side of sensormeter: queue a company's report after a change."""

from __future__ import annotations

import functools
import logging

import redis
from django.conf import settings

from sensormeter import ServiceUnavailable, Settings, enqueue_sensor_report

log = logging.getLogger(__name__)


def sensormeter_settings() -> Settings:
    """sensormeter's settings of this process (settings.SENSORMETER)."""
    configured: Settings = settings.SENSORMETER
    return configured


@functools.cache
def _redis(url: str) -> redis.Redis:
    # One client (one connection pool) per URL for the life of the process; it connects on
    # first use. On Heroku Redis (rediss:// with a self-signed certificate) add
    # ssl_cert_reqs=None here.
    return redis.Redis.from_url(url)


def report_company(company_id: int) -> str | None:
    """Queue a report of the company's device count; returns the job id, None if Redis is down.

    A Redis outage must not fail the user's request: the change is committed, and the next
    hourly report (or the period-close report) carries the count.
    """
    config = sensormeter_settings()
    try:
        return enqueue_sensor_report(
            str(company_id), settings=config, connection=_redis(config.redis_url)
        )
    except ServiceUnavailable as exc:
        log.warning("sensor report not queued for company %s: %s", company_id, exc)
        return None

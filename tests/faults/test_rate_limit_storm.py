"""A 429 storm: the whole fleet at once against a Stripe that allows far fewer events per second.

With no client-side limit configured (pointed at the emulator, none applies until a 429),
five workers with the default settings meet a 100 events/s ceiling. The shared limit slows
every worker down after the first 429s, jittered retries spread what is left, and every
report is delivered: none ends `failed`. How long it takes is measured by
benchmarks/rate_limit_storm.py, not here.
"""

from __future__ import annotations

import redis

from sensormeter.emulator import StripeEmulator
from sensormeter.models import MeterReport, Organization, Sensor, Subscription
from sensormeter.settings import Settings
from sensormeter.tasks.fanout import enqueue_fanout

from .conftest import assert_billed_exactly_once, current_hour, run_cli

ORGANIZATIONS = 3000
STRIPE_EVENTS_PER_SECOND = 100


def seed_in_bulk(count: int) -> dict[str, str]:
    """``count`` billable organizations (1-5 sensors) and one canceled; organization -> customer."""
    orgs = [f"org{i:05d}" for i in range(count)]
    rows = [(o, o) for o in [*orgs, "org-canceled"]]
    subscriptions = [(o, f"cus_{o}", "active") for o in orgs]
    subscriptions.append(("org-canceled", "cus_org-canceled", "canceled"))
    sensors = [(o, True) for i, o in enumerate(orgs) for _ in range(1 + i % 5)]
    sensors += [("org-canceled", True)] * 3
    subscription_fields = [
        Subscription.organization,
        Subscription.stripe_customer_id,
        Subscription.status,
    ]
    for start in range(0, len(rows), 500):
        Organization.insert_many(
            rows[start : start + 500], fields=[Organization.id, Organization.name]
        ).execute()
        Subscription.insert_many(
            subscriptions[start : start + 500], fields=subscription_fields
        ).execute()
    for start in range(0, len(sensors), 1000):
        Sensor.insert_many(
            sensors[start : start + 1000], fields=[Sensor.organization, Sensor.is_active]
        ).execute()
    return {o: f"cus_{o}" for o in orgs}


def test_a_429_storm_with_default_settings_loses_nothing(
    fault_settings: Settings, fault_db: object, emulator: StripeEmulator
) -> None:
    """3,000 organizations at once against 100 events/s, default settings: all delivered once."""
    settings = Settings(
        redis_url=fault_settings.redis_url,
        database_url=fault_settings.database_url,
        stripe_api_key=fault_settings.stripe_api_key,
        stripe_api_base=emulator.base_url,
        queue_name=fault_settings.queue_name,
    )
    assert settings.effective_rate_limit() is None  # nothing limits the workers at first
    customers = seed_in_bulk(ORGANIZATIONS)
    emulator.set_rate_limit(STRIPE_EVENTS_PER_SECOND)
    hour = current_hour()
    enqueue_fanout(settings, redis.Redis.from_url(settings.redis_url), hour)
    done = run_cli(settings, "worker", "-n", "5", "--burst", timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert '"ratelimit.decreased"' in done.stderr  # the storm did happen, and was answered
    assert MeterReport.select().where(MeterReport.status == "failed").count() == 0
    assert_billed_exactly_once(emulator, customers, hour)

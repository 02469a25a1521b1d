"""Rows for tests: organizations with a subscription and sensors."""

from __future__ import annotations

from datetime import timedelta

from sensormeter.models import Organization, Sensor, Subscription, utcnow


def make_org(
    org_id: str,
    *,
    status: str = "active",
    customer: str | None = "default",
    active: int = 0,
    inactive: int = 0,
    deleted: int = 0,
) -> Organization:
    """An organization with one subscription and the given sensors (customer cus_<id>)."""
    org = Organization.create(id=org_id, name=org_id.title())
    Subscription.create(
        organization=org,
        status=status,
        stripe_customer_id=f"cus_{org_id}" if customer == "default" else customer,
    )
    now = utcnow()
    # insert_many takes its columns from the first row, so every row names all three.
    rows = [(org_id, True, None)] * active + [(org_id, False, None)] * inactive
    rows += [(org_id, True, now - timedelta(hours=1))] * deleted
    if rows:
        Sensor.insert_many(
            rows, fields=[Sensor.organization, Sensor.is_active, Sensor.deleted_at]
        ).execute()
    return org

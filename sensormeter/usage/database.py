"""The default usage source, over sensormeter's organizations, subscriptions and sensors."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import peewee

from ..db import one_of
from ..models import Organization, Sensor, Subscription, tuples, utcnow
from .source import BLANKS, NO_CUSTOMER, NO_SUBSCRIPTION, UnbilledUsage, ends_in_window


def _any(condition: peewee.Expression) -> peewee.Function:
    """1 when ``condition`` holds for some row of the group, else 0."""
    return peewee.fn.MAX(peewee.Case(None, [(condition, 1)], 0))


class DatabaseUsageSource:
    """The default source: sensormeter's ``organizations``/``subscriptions``/``sensors`` tables."""

    def __init__(self, database: peewee.Database, billable_status_values: Sequence[str]) -> None:
        self.database = database
        self.statuses = list(billable_status_values)

    def _billable(self) -> peewee.Expression:
        # A customer id of blanks is as missing as an empty one. trim(x, chars) means the
        # same on SQLite and PostgreSQL; plain TRIM would remove spaces only.
        return (
            Subscription.status.in_(self.statuses)
            & Subscription.stripe_customer_id.is_null(False)
            & (peewee.fn.TRIM(Subscription.stripe_customer_id, BLANKS) != "")
        )

    def billable_organization_ids(self, after: str | None, limit: int) -> list[str]:
        """Keyset-paginated billable organization ids (one query per page)."""
        org = Subscription.organization_id  # type: ignore[attr-defined]
        query = Subscription.select(org).where(self._billable())
        if after is not None:
            query = query.where(org > after)
        query = query.distinct().order_by(org).limit(limit)
        return [row[0] for row in tuples(query)]

    def billable_customers(self, organization_ids: Sequence[str]) -> dict[str, str]:
        """Billable organizations of the chunk with their customer (newest subscription wins)."""
        if not organization_ids:
            return {}
        org = Subscription.organization_id  # type: ignore[attr-defined]
        query = (
            Subscription.select(org, Subscription.stripe_customer_id)
            .where(self._billable() & one_of(org, organization_ids))
            .order_by(org, Subscription.id)
        )
        # Ascending id: a later subscription of the same organization overwrites an earlier one.
        return {org_id: customer for org_id, customer in tuples(query)}

    def organizations_of_customers(self, customers: Sequence[str]) -> dict[str, list[str]]:
        """The billable organizations billed to each of ``customers`` (one query).

        An organization counts under the customer :meth:`billable_customers` gives it (its
        newest billable subscription's), so both methods always agree.
        """
        if not customers:
            return {}
        org = Subscription.organization_id  # type: ignore[attr-defined]
        # Two indexed reads, not one query with ``IN (subquery)``: PostgreSQL ran that as a
        # hash semi-join over a sequential scan of every subscription, in every report job
        # (a cost growing with the fleet: 0.1 s a chunk at 100,000 organizations).
        candidates = {
            o
            for (o,) in tuples(
                Subscription.select(org).where(
                    Subscription.status.in_(self.statuses)
                    & one_of(Subscription.stripe_customer_id, customers)
                )
            )
        }
        if not candidates:
            return {}
        query = (
            Subscription.select(org, Subscription.stripe_customer_id)
            .where(self._billable() & one_of(org, sorted(candidates)))
            .order_by(org, Subscription.id)
        )
        # Ascending id: a later subscription of the same organization overwrites an earlier one.
        owner = {org_id: customer for org_id, customer in tuples(query)}
        wanted = set(customers)
        members: dict[str, list[str]] = {}
        for org_id, customer in sorted(owner.items()):
            if customer in wanted:
                members.setdefault(customer, []).append(org_id)
        return members

    def customers_with_several_subscriptions(self, limit: int = 20) -> dict[str, int]:
        """Stripe customers with more than one billable subscription, and how many they have.

        Stripe's docs do not say how one customer's meter is billed across several
        subscription items on prices with that meter: ``sensormeter status`` warns of these.
        """
        customer = Subscription.stripe_customer_id
        count = peewee.fn.COUNT(Subscription.id)
        query = (
            Subscription.select(customer, count)
            .where(self._billable())
            .group_by(customer)
            .having(count > 1)
            .order_by(customer)
            .limit(limit)
        )
        return {c: int(n) for c, n in tuples(query)}

    def count_active_sensors(self, organization_ids: Sequence[str]) -> dict[str, int]:
        """One GROUP BY query; organizations with no active sensor count 0.

        A sensor created in the future is not counted yet: read later for the same moment
        (``count_active_sensors_at``) it would not be either, and an hour has one count.
        """
        alive_now = Sensor.deleted_at.is_null() & (Sensor.created_at <= utcnow())
        return self._count(organization_ids, alive_now)

    def count_active_sensors_at(
        self, organization_ids: Sequence[str], at: datetime
    ) -> dict[str, int]:
        """Active sensors as of ``at`` (UTC), from ``created_at`` and ``deleted_at``.

        ``is_active`` has no history, so a sensor switched off since counts as off then too.
        """
        alive_then = (Sensor.created_at <= at) & (
            Sensor.deleted_at.is_null() | (Sensor.deleted_at > at)
        )
        return self._count(organization_ids, alive_then)

    def _count(self, organization_ids: Sequence[str], alive: Any) -> dict[str, int]:
        if not organization_ids:
            return {}
        org = Sensor.organization_id  # type: ignore[attr-defined]
        query = (
            Sensor.select(org, peewee.fn.COUNT(Sensor.id))
            .where(
                one_of(org, organization_ids)
                & (Sensor.is_active == True)  # noqa: E712 (peewee builds SQL from ==)
                & alive
            )
            .group_by(org)
        )
        counts = {org_id: 0 for org_id in organization_ids}
        counts.update({org_id: int(n) for org_id, n in tuples(query)})
        return counts

    def periods_ending(self, after: datetime, until: datetime) -> dict[str, list[datetime]]:
        """Billable organizations with period ends in (after, until], naive UTC, ascending.

        A period ends at ``current_period_end``; once the host has recorded the renewal, the
        ended period's end is the new period's ``current_period_start``. One query, over the
        index of each column; billability is checked on the few rows found (given the status
        too, a database may scan every active subscription instead).
        """
        org = Subscription.organization_id  # type: ignore[attr-defined]
        start, end = Subscription.current_period_start, Subscription.current_period_end
        query = Subscription.select(
            org, Subscription.status, Subscription.stripe_customer_id, start, end
        ).where(((end > after) & (end <= until)) | ((start > after) & (start <= until)))
        statuses = set(self.statuses)
        rows = [
            (org_id, *moments)
            for org_id, status, customer, *moments in tuples(query)
            if status in statuses and customer
        ]
        return ends_in_window(rows, after, until)

    def unbilled_usage(self) -> list[UnbilledUsage]:
        """Organizations with active sensors that are not billable, and why (one query).

        Counts every active sensor of the fleet (a GROUP BY over ``sensors``) and joins each
        organization's subscriptions, summarized; the reason is the status of its newest
        subscription, unless a billable one lacks its customer id or it has none. Runs on
        ``self.database`` without the models' binding (a metrics process keeps its own).
        """
        org = Sensor.organization_id  # type: ignore[attr-defined]
        alive = (
            (Sensor.is_active == True)  # noqa: E712 (peewee builds SQL from ==)
            & Sensor.deleted_at.is_null()
            & (Sensor.created_at <= utcnow())
        )
        counts = (
            Sensor.select(org.alias("org"), peewee.fn.COUNT(Sensor.id).alias("n"))
            .where(alive)
            .group_by(org)
            .alias("counts")
        )
        sub_org = Subscription.organization_id  # type: ignore[attr-defined]
        subs = (
            Subscription.select(
                sub_org.alias("org"),
                _any(self._billable()).alias("billable"),
                _any(Subscription.status.in_(self.statuses)).alias("status_ok"),
                peewee.fn.MAX(Subscription.id).alias("newest"),
            )
            .group_by(sub_org)
            .alias("subs")
        )
        newest = Subscription.alias("newest")
        query = (
            peewee.Select([counts], [counts.c.org, counts.c.n, subs.c.status_ok, newest.status])
            .join(subs, peewee.JOIN.LEFT_OUTER, on=(subs.c.org == counts.c.org))
            .join(newest, peewee.JOIN.LEFT_OUTER, on=(newest.id == subs.c.newest))
            .where(subs.c.billable.is_null() | (subs.c.billable == 0))
            .order_by(counts.c.org)
        )
        found = []
        for org_id, n, status_ok, status in query.tuples().execute(self.database):
            if status_ok is None:
                reason = NO_SUBSCRIPTION
            elif status_ok:
                reason = NO_CUSTOMER
            else:
                reason = str(status)
            found.append(UnbilledUsage(str(org_id), reason, int(n)))
        return found

    def explain_not_billable(self, organization_id: str) -> str:
        """Distinguish an unknown organization, a missing customer and a non-billable status."""
        if not Organization.select().where(Organization.id == organization_id).exists():
            return "unknown organization"
        subs = tuples(
            Subscription.select(Subscription.status, Subscription.stripe_customer_id).where(
                Subscription.organization_id == organization_id  # type: ignore[attr-defined]
            )
        )
        if not subs:
            return "no subscription"
        billable = [s for s in subs if s[0] in self.statuses]
        if not billable:
            return "subscription status not billable: " + ", ".join(sorted({s[0] for s in subs}))
        return "no Stripe customer on its billable subscription"

"""Where billable organizations and their active-sensor counts come from.

The default source reads sensormeter's own tables. A host with its own schema implements
:class:`UsageSource` (four methods) and names a factory in ``SENSORMETER_USAGE_SOURCE``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

import peewee

from ..errors import ConfigurationError, SensormeterError
from ..logs import scrub
from ..models import Organization, Sensor, Subscription, tuples, utcnow
from ..settings import Settings

# What "blank" means for a customer id: ASCII whitespace, trimmed alike in SQL and in Python.
BLANKS = " \t\n\r\f\v"


@runtime_checkable
class UsageSource(Protocol):
    """Bulk reads sensormeter needs; every method is one query for a whole chunk."""

    def billable_organization_ids(self, after: str | None, limit: int) -> list[str]:
        """Billable organization ids greater than ``after``, ascending, at most ``limit``."""
        ...

    def billable_customers(self, organization_ids: Sequence[str]) -> dict[str, str]:
        """Map each billable organization among ``organization_ids`` to its Stripe customer."""
        ...

    def count_active_sensors(self, organization_ids: Sequence[str]) -> dict[str, int]:
        """Map each organization among ``organization_ids`` to its active-sensor count."""
        ...

    def explain_not_billable(self, organization_id: str) -> str:
        """Say in a few words why an organization is not billable (for the log)."""
        ...


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
            .where(self._billable() & org.in_(list(organization_ids)))
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
        Candidate = Subscription.alias()
        candidates = Candidate.select(Candidate.organization_id).where(
            Candidate.status.in_(self.statuses) & Candidate.stripe_customer_id.in_(list(customers))
        )
        query = (
            Subscription.select(org, Subscription.stripe_customer_id)
            .where(self._billable() & org.in_(candidates))
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
                org.in_(list(organization_ids))
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
        return _ends_in_window(rows, after, until)

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


def _naive(value: Any) -> datetime:
    # SQLite hands datetimes back as text when peewee cannot coerce them.
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment.replace(tzinfo=None)


def _ends_in_window(
    rows: Iterable[Sequence[Any]], after: datetime, until: datetime
) -> dict[str, list[datetime]]:
    """Each organization's moments (from rows of organization, moment, ...) in the window."""
    found: dict[str, set[datetime]] = {}
    for org_id, *moments in rows:
        for moment in moments:
            if moment is not None and after < _naive(moment) <= until:
                found.setdefault(org_id, set()).add(_naive(moment))
    return {org_id: sorted(ends) for org_id, ends in found.items()}


class InMemoryUsageSource:
    """A twin of :class:`DatabaseUsageSource` over plain dicts, for fast tests and examples."""

    def __init__(
        self,
        customers: Mapping[str, str],
        counts: Mapping[str, int] | None = None,
        period_ends: Mapping[str, datetime] | None = None,
        period_starts: Mapping[str, datetime] | None = None,
    ) -> None:
        self.customers = dict(customers)
        self.counts = dict(counts or {})
        self.period_ends = dict(period_ends or {})
        self.period_starts = dict(period_starts or {})
        self.queries = 0

    def periods_ending(self, after: datetime, until: datetime) -> dict[str, list[datetime]]:
        """Billable organizations with period ends (or renewals' starts) in (after, until]."""
        self.queries += 1
        rows = [
            (o, self.period_starts.get(o), self.period_ends.get(o))
            for o in sorted(set(self.period_ends) | set(self.period_starts))
            if self.customers.get(o)
        ]
        return _ends_in_window(rows, after, until)

    def _has_customer(self, organization_id: str) -> bool:
        # As the database source: a customer id that is blank after trimming is none.
        return bool((self.customers.get(organization_id) or "").strip(BLANKS))

    def billable_organization_ids(self, after: str | None, limit: int) -> list[str]:
        """Billable ids after ``after``, ascending."""
        self.queries += 1
        ids = sorted(o for o in self.customers if self._has_customer(o))
        return [o for o in ids if after is None or o > after][:limit]

    def billable_customers(self, organization_ids: Sequence[str]) -> dict[str, str]:
        """Customers of the billable organizations among ``organization_ids``."""
        self.queries += 1
        return {o: self.customers[o] for o in organization_ids if self._has_customer(o)}

    def organizations_of_customers(self, customers: Sequence[str]) -> dict[str, list[str]]:
        """The billable organizations of each customer, ascending."""
        self.queries += 1
        members: dict[str, list[str]] = {}
        for org, customer in sorted(self.billable_customers(list(self.customers)).items()):
            if customer in customers:
                members.setdefault(customer, []).append(org)
        return members

    def count_active_sensors(self, organization_ids: Sequence[str]) -> dict[str, int]:
        """Counts for ``organization_ids`` (0 when unknown)."""
        self.queries += 1
        return {o: self.counts.get(o, 0) for o in organization_ids}

    def explain_not_billable(self, organization_id: str) -> str:
        """Unknown or customer-less."""
        return "no Stripe customer" if organization_id in self.customers else "unknown organization"


def iter_billable_chunks(source: UsageSource, chunk_size: int) -> Iterator[list[str]]:
    """Stream billable organization ids in chunks; memory stays bounded by ``chunk_size``."""
    after: str | None = None
    while True:
        chunk = source.billable_organization_ids(after, chunk_size)
        if not chunk:
            return
        yield chunk
        if len(chunk) < chunk_size:
            return
        after = chunk[-1]


UsageSourceFactory = Callable[[Settings, peewee.Database], UsageSource]


def load_usage_source(settings: Settings, database: peewee.Database) -> UsageSource:
    """Build the configured source: the default tables, or the host's ``module:factory``."""
    if settings.usage_source is None:
        return DatabaseUsageSource(database, settings.billable_status_values)
    module_name, _, attribute = settings.usage_source.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(
            "SENSORMETER_USAGE_SOURCE", f"cannot load {settings.usage_source!r}: {exc}"
        ) from None
    if not callable(factory):
        raise ConfigurationError(
            "SENSORMETER_USAGE_SOURCE",
            f"{settings.usage_source!r} is a {type(factory).__name__}, not a factory to call",
        )
    try:
        source = factory(settings, database)
    except SensormeterError:
        raise  # already one clear line (e.g. ServiceUnavailable from the host's own check)
    except Exception as exc:  # noqa: BLE001 (any failure of the host's factory is named)
        # The factory is the host's code: whatever it raises (os:getcwd, builtins:dict give a
        # TypeError) must stop the process with one line naming the setting, and no secret.
        lines = str(exc).strip().splitlines()
        raise ConfigurationError(
            "SENSORMETER_USAGE_SOURCE",
            f"calling {settings.usage_source!r}(settings, database) failed: "
            f"{type(exc).__name__}: {scrub(lines[0]) if lines else '(no message)'}",
        ) from None
    if not isinstance(source, UsageSource):
        raise ConfigurationError(
            "SENSORMETER_USAGE_SOURCE",
            f"{settings.usage_source!r} returned {type(source).__name__}, which lacks the "
            "UsageSource methods",
        )
    return source

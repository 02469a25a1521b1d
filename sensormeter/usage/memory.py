"""The in-memory twin of the default usage source, for fast tests and examples."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from .source import BLANKS, ends_in_window


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
        return ends_in_window(rows, after, until)

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

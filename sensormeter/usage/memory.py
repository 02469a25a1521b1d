"""The in-memory twin of the default usage source, for fast tests and examples."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from .source import BLANKS, NO_CUSTOMER, NO_SUBSCRIPTION, UnbilledUsage, ends_in_window


class InMemoryUsageSource:
    """A twin of :class:`DatabaseUsageSource` over plain dicts, for fast tests and examples."""

    def __init__(
        self,
        customers: Mapping[str, str],
        counts: Mapping[str, int] | None = None,
        period_ends: Mapping[str, datetime] | None = None,
        period_starts: Mapping[str, datetime] | None = None,
        statuses: Mapping[str, str] | None = None,
    ) -> None:
        self.customers = dict(customers)
        # Organizations whose subscription is in a status that is not billable (past_due,
        # canceled, ...): they are not billable, whatever their customer.
        self.statuses = dict(statuses or {})
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
            if self.customers.get(o) and o not in self.statuses
        ]
        return ends_in_window(rows, after, until)

    def _has_customer(self, organization_id: str) -> bool:
        # As the database source: a customer id that is blank after trimming is none.
        if organization_id in self.statuses:
            return False
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

    def unbilled_usage(self) -> list[UnbilledUsage]:
        """Organizations with a count above 0 that are not billable, and why."""
        self.queries += 1
        found = []
        for org, n in sorted(self.counts.items()):
            if n <= 0 or self._has_customer(org):
                continue
            if org in self.statuses:
                reason = self.statuses[org]
            else:
                reason = NO_CUSTOMER if org in self.customers else NO_SUBSCRIPTION
            found.append(UnbilledUsage(org, reason, n))
        return found

    def explain_not_billable(self, organization_id: str) -> str:
        """A status that is not billable, no customer, or unknown."""
        if organization_id in self.statuses:
            return f"subscription status not billable: {self.statuses[organization_id]}"
        return "no Stripe customer" if organization_id in self.customers else "unknown organization"

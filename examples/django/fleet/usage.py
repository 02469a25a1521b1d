"""sensormeter's view of the host's tables: a UsageSource over the fleet models.

Each method is one query for a whole chunk (sensormeter/usage/source.py). Company keys are
integers; sensormeter gets them as strings and only needs "ascending" and "after" to agree,
so both are compared as integers here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from .models import Company, Device, Plan


def _pks(organization_ids: Iterable[str]) -> list[int]:
    # An on-demand report can name any well-formed id; one that is no company key matches none.
    return [int(org) for org in organization_ids if org.isdigit()]


def _aware(moment: datetime) -> datetime:
    # sensormeter passes and expects naive UTC; Django (USE_TZ) stores aware datetimes.
    return moment.replace(tzinfo=UTC)


class FleetUsageSource:
    """Billable companies, their Stripe customers and their device counts, from Django."""

    def __init__(self, statuses: Sequence[str]) -> None:
        self.statuses = list(statuses)  # the billable plan states (settings.billable_status_values)

    def _billable(self) -> QuerySet[Company]:
        return (
            Company.objects.filter(plans__state__in=self.statuses)
            .exclude(stripe_customer="")
            .distinct()
        )

    def billable_organization_ids(self, after: str | None, limit: int) -> list[str]:
        """Billable company ids greater than ``after``, ascending, at most ``limit``."""
        companies = self._billable().order_by("pk")
        if after is not None:
            companies = companies.filter(pk__gt=int(after))
        return [str(pk) for pk in companies.values_list("pk", flat=True)[:limit]]

    def billable_customers(self, organization_ids: Sequence[str]) -> dict[str, str]:
        """Each billable company among the ids, with its Stripe customer."""
        rows = self._billable().filter(pk__in=_pks(organization_ids))
        return {str(pk): customer for pk, customer in rows.values_list("pk", "stripe_customer")}

    def count_active_sensors(self, organization_ids: Sequence[str]) -> dict[str, int]:
        """Each company's devices billed now (0 when it has none)."""
        return self.count_active_sensors_at(organization_ids, timezone.now().replace(tzinfo=None))

    def count_active_sensors_at(
        self, organization_ids: Sequence[str], at: datetime
    ) -> dict[str, int]:
        """Each company's devices as they were at ``at`` (naive UTC), for late or past hours."""
        moment = _aware(at)
        rows = (
            Device.objects.filter(company_id__in=_pks(organization_ids), enabled=True)
            .filter(installed_at__lte=moment)
            .filter(Q(retired_at__isnull=True) | Q(retired_at__gt=moment))
            .values("company_id")
            .annotate(n=Count("id"))
        )
        counts = dict.fromkeys(organization_ids, 0)
        counts.update({str(row["company_id"]): row["n"] for row in rows})
        return counts

    def explain_not_billable(self, organization_id: str) -> str:
        """Why a company is not billable, in a few words for sensormeter's log line."""
        company = Company.objects.filter(pk__in=_pks([organization_id])).first()
        if company is None:
            return "no such company"
        if not company.stripe_customer.strip():
            return "company has no Stripe customer"
        states = sorted(set(company.plans.values_list("state", flat=True)))
        return f"no plan in a billable state (plans: {', '.join(states) or 'none'})"

    def periods_ending(self, after: datetime, until: datetime) -> dict[str, list[datetime]]:
        """Billable companies with a period ending in (after, until], for period-close reports."""
        lo, hi = _aware(after), _aware(until)
        plans = Plan.objects.filter(state__in=self.statuses, company__in=self._billable()).filter(
            Q(period_end__gt=lo, period_end__lte=hi)
            # A renewed plan's period_start is the end of the period before.
            | Q(period_start__gt=lo, period_start__lte=hi)
        )
        ends: dict[str, set[datetime]] = {}
        for company_id, *moments in plans.values_list("company_id", "period_end", "period_start"):
            for moment in moments:
                if moment is not None and lo < moment <= hi:
                    ends.setdefault(str(company_id), set()).add(moment.replace(tzinfo=None))
        return {company: sorted(moments) for company, moments in ends.items()}

    def organizations_of_customers(self, customers: Sequence[str]) -> dict[str, list[str]]:
        """The billable companies of each Stripe customer (one event per customer an hour)."""
        found: dict[str, list[str]] = {}
        rows = self._billable().filter(stripe_customer__in=customers).order_by("pk")
        for pk, customer in rows.values_list("pk", "stripe_customer"):
            found.setdefault(customer, []).append(str(pk))
        return found

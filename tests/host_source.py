"""A host's own usage source, loaded by tests through SENSORMETER_USAGE_SOURCE."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sensormeter.settings import Settings
from sensormeter.usage import DatabaseUsageSource, InMemoryUsageSource


def make_source(settings: Settings, database: Any) -> InMemoryUsageSource:
    """Factory named as tests.host_source:make_source."""
    return InMemoryUsageSource({"h1": "cus_h1"}, {"h1": 9})


def not_a_source(settings: Settings, database: Any) -> object:
    """Returns something that lacks the UsageSource methods."""
    return object()


class PoisonedSource(DatabaseUsageSource):
    """The default tables, plus one organization id with a trailing newline ("org002\\n").

    What a host's source may hand back from a dirty row; it must cost only itself.
    """

    BAD = "org002\n"

    def billable_organization_ids(self, after: str | None, limit: int) -> list[str]:
        """The real ids, with the bad one beside org002."""
        ids = super().billable_organization_ids(after, limit)
        return sorted(ids + [self.BAD]) if "org002" in ids else ids

    def billable_customers(self, organization_ids: Sequence[str]) -> dict[str, str]:
        """The bad id claims org002's customer."""
        found = super().billable_customers([o for o in organization_ids if o != self.BAD])
        if self.BAD in organization_ids:
            found[self.BAD] = "cus_org002"
        return found


def poisoned_source(settings: Settings, database: Any) -> PoisonedSource:
    """Factory named as tests.host_source:poisoned_source."""
    return PoisonedSource(database, settings.billable_status_values)


class MinimalSource:
    """Only the four required methods: none of the optional ones (unbilled_usage, ...)."""

    def billable_organization_ids(self, after: str | None, limit: int) -> list[str]:
        """One billable organization."""
        return ["m1"] if after is None else []

    def billable_customers(self, organization_ids: Sequence[str]) -> dict[str, str]:
        """m1 is billed to cus_m1."""
        return {o: "cus_m1" for o in organization_ids if o == "m1"}

    def count_active_sensors(self, organization_ids: Sequence[str]) -> dict[str, int]:
        """m1 has 4 sensors."""
        return {o: 4 if o == "m1" else 0 for o in organization_ids}

    def explain_not_billable(self, organization_id: str) -> str:
        """Anything else is unknown."""
        return "unknown organization"


def minimal_source(settings: Settings, database: Any) -> MinimalSource:
    """Factory named as tests.host_source:minimal_source."""
    return MinimalSource()

"""The billable history read for a past hour: by its reports, by catch-up and backfill.

The history **answers for** an organization at an hour once it has recorded the organization
(its first recorded hour is at or before that hour), at an hour a complete fan-out recorded
or one of its intervals covers; there, billable means inside an interval. Elsewhere (before
the first recorded hour, as in a database upgraded from schema 2; the current hour before its
fan-out; an outage not bridged) the usage source answers, with who is billable now.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from ..hours import format_hour, hour_start
from ..models import utcnow
from .history import RUNS, Interval, customers_at, known_since, members_at, overlapping


@dataclass
class Spans:
    """What catch-up needs of some organizations' history over a window (see :func:`spans`)."""

    known_since: dict[str, datetime] = field(default_factory=dict)
    intervals: dict[str, list[Interval]] = field(default_factory=dict)
    runs: list[Interval] = field(default_factory=list)

    def knows(self, organization_id: str, hour: datetime) -> bool:
        """Whether the history answers for this organization at ``hour``.

        It does once it has recorded the organization, at an hour a complete fan-out
        recorded or one of the organization's intervals covers. Of an hour no run recorded
        (the current one before its fan-out, an outage not bridged) it knows nothing.
        """
        since = self.known_since.get(organization_id)
        if since is None or since > hour:
            return False
        return self.billable(organization_id, hour) or any(r.covers(hour) for r in self.runs)

    def billable(self, organization_id: str, hour: datetime) -> bool:
        """Whether the history has the organization billable at ``hour``."""
        return any(i.covers(hour) for i in self.intervals.get(organization_id, ()))


def spans(organization_ids: Sequence[str], first: datetime, last: datetime) -> Spans:
    """The organizations' first recorded hours, and their intervals overlapping first..last."""
    found = Spans(known_since(organization_ids))
    if found.known_since:
        for interval in overlapping([*sorted(found.known_since), RUNS], first, last):
            if interval.organization_id == RUNS:
                found.runs.append(interval)
            else:
                found.intervals.setdefault(interval.organization_id, []).append(interval)
    return found


def past_hour(report_hour: datetime | None, now: datetime | None = None) -> datetime | None:
    """The report's hour when it is before the current UTC hour (the history answers then)."""
    if report_hour is None:
        return None
    current = hour_start(now if now is not None else utcnow())
    return report_hour if hour_start(report_hour) < current else None


@dataclass(frozen=True)
class BillableThen:
    """What the history says of some organizations at a past hour (see :func:`billable_then`).

    ``known`` are the organizations the history answers for at that hour (see
    :meth:`Spans.knows`); of them, ``customers`` were billable then (with their customer of
    then). The others are left to the usage source, as before the history existed.
    """

    hour: datetime
    known: frozenset[str]
    customers: dict[str, str]

    def reason(self, organization_id: str) -> str:
        """Why a known organization is not reported for the hour, for the log."""
        return f"not billable at {format_hour(self.hour)} (billable history)"


def billable_then(organization_ids: Sequence[str], hour: datetime) -> BillableThen:
    """The organizations the history answers for at ``hour``, and which were billable then."""
    hour = hour_start(hour)
    customers = customers_at([*organization_ids, RUNS], hour)
    if customers.pop(RUNS, None) is None:  # no run recorded the hour: only intervals tell
        return BillableThen(hour, frozenset(customers), customers)
    known = frozenset(o for o, first in known_since(organization_ids).items() if first <= hour)
    return BillableThen(hour, known, customers)


def members_then(members: Mapping[str, Iterable[str]], hour: datetime) -> dict[str, set[str]]:
    """Each customer's organizations at a past hour, from those the usage source gives now.

    An organization the history answers for at ``hour`` counts only if it was billable under
    that customer then (even if it is not now); any other stays as the source says.
    """
    hour = hour_start(hour)
    then = members_at(members, hour)
    known: set[str] = set()
    if customers_at([RUNS], hour):
        candidates = sorted({o for orgs in members.values() for o in orgs})
        known = {o for o, first in known_since(candidates).items() if first <= hour}
    return {
        customer: {o for o in orgs if o not in known} | set(then.get(customer, ()))
        for customer, orgs in members.items()
    }

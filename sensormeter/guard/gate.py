"""The anomaly guard as a gate: hold a report far off the organization's recent deliveries.

Before the reporter sends a chunk, the guard reads the few newest delivered values of every
organization of the chunk (one query) and judges each reading by the rules (rules.py). A row
that trips one is kept back as ``held`` with its evidence; the recount job (tasks/held.py) or
``sensormeter held release`` sends it later. A row that was recounted or released carries
that in its evidence and is let through: the guard never holds the same decision twice.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import peewee

from ..db import one_of
from ..gate import KeptBack
from ..hours import hour_start
from ..ledger import LedgerRow
from ..logs import get_logger
from ..meters.base import SendResult
from ..models import MeterReport, utcnow
from ..settings import Settings
from .rules import Thresholds, judge

log = get_logger(__name__)

HISTORY = 3  # the recent delivered hourly values a reading is compared with, newest first
# Only hours this recent count as history: an organization back after a long pause starts
# afresh (and is not held).
LOOKBACK = timedelta(hours=24)
GATE = "guard"  # the evidence's "gate": which gate held the row
# Evidence keys that mean a person or the recount already decided: let the row through.
DECIDED = ("released", "recount")


def moment(value: Any) -> datetime:
    """A timestamp column as a naive UTC datetime (SQLite hands subquery columns as text)."""
    parsed = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return parsed.replace(tzinfo=None)


def iso(value: datetime) -> str:
    """A naive UTC datetime as the evidence writes it (seconds, no offset)."""
    return value.replace(microsecond=0).isoformat()


def recent_deliveries(
    database: peewee.Database,
    organization_ids: Sequence[str],
    event_names: Sequence[str],
    since: datetime,
    per_organization: int = HISTORY,
) -> dict[str, list[tuple[int, datetime]]]:
    """Each organization's newest delivered hourly (value, measured_at), newest first.

    One query: its own sent hourly rows (its part, for a shared customer) of the hours since
    ``since``, read through the ``(organization_id, period_hour)`` index, so the cost stays
    that of the window whatever the ledger's age; the window function keeps the answer to
    ``per_organization`` rows an organization. Hourly reports are the regular series an
    organization is judged by (on-demand and closing reports are judged, not judged by).
    """
    if not organization_ids:
        return {}
    n = (
        peewee.fn.ROW_NUMBER()
        .over(
            partition_by=[MeterReport.organization_id],
            order_by=[MeterReport.measured_at.desc(), MeterReport.id.desc()],
        )
        .alias("n")
    )
    ranked = (
        MeterReport.select(
            MeterReport.organization_id, MeterReport.value, MeterReport.measured_at, n
        )
        .where(
            one_of(MeterReport.organization_id, sorted(set(organization_ids)))
            & (MeterReport.period_hour >= since)
            & (MeterReport.kind == MeterReport.HOURLY)
            # Not through the status index: "sent" is nearly every row of the ledger, but
            # the planner, its statistics taken on a young ledger, ANDed that index's whole
            # "sent" bitmap with the window's, a cost growing with the ledger on every chunk.
            & (MeterReport.status.concat("") == MeterReport.SENT)
            & MeterReport.event_name.in_(sorted(set(event_names)))
        )
        .alias("ranked")
    )
    query = (
        peewee.Select([ranked], [ranked.c.organization_id, ranked.c.value, ranked.c.measured_at])
        .where(ranked.c.n <= per_organization)
        .order_by(ranked.c.organization_id, ranked.c.n)
    )
    found: dict[str, list[tuple[int, datetime]]] = defaultdict(list)
    for org, value, measured_at in database.execute(query).fetchall():
        found[str(org)].append((int(value), moment(measured_at)))
    return dict(found)


def decided(database: peewee.Database, row_ids: Sequence[int]) -> set[int]:
    """The rows (among ``row_ids``) a recount or a release already decided to send."""
    if not row_ids:
        return set()
    query = MeterReport.select(MeterReport.id, MeterReport.evidence).where(
        MeterReport.id.in_(list(row_ids)) & MeterReport.evidence.is_null(False)
    )
    found = set()
    for row_id, evidence in database.execute(query).fetchall():
        try:
            facts = json.loads(evidence)
        except ValueError:
            continue
        if isinstance(facts, dict) and any(key in facts for key in DECIDED):
            found.add(int(row_id))
    return found


class Guard:
    """The anomaly guard: a :class:`~sensormeter.gate.Gate` that holds implausible readings."""

    def __init__(self, thresholds: Thresholds, lookback: timedelta = LOOKBACK) -> None:
        self.thresholds = thresholds
        self.lookback = lookback

    @classmethod
    def from_settings(cls, settings: Settings) -> Guard:
        """The guard with the thresholds of SENSORMETER_GUARD_MIN_COUNT and _FACTOR."""
        return cls(Thresholds(settings.guard_min_count, settings.guard_factor))

    def keep_back(self, database: Any, rows: Sequence[LedgerRow]) -> dict[int, KeptBack]:
        """The rows whose reading trips a rule against the recent deliveries, as ``held``."""
        if not rows:
            return {}
        since = hour_start(min(row.measured_at for row in rows) - self.lookback)
        history = recent_deliveries(
            database,
            [row.organization_id for row in rows],
            [row.event_name for row in rows],
            since,
        )
        kept: dict[int, KeptBack] = {}
        now = utcnow()
        for row in rows:
            previous = history.get(row.organization_id)
            if not previous:
                continue
            trip = judge(int(row.value), [value for value, _ in previous], self.thresholds)
            if trip is None:
                continue
            kept[row.id] = KeptBack(
                MeterReport.HELD,
                {
                    "gate": GATE,
                    "organization_id": row.organization_id,
                    "rule": trip.rule,
                    "explanation": trip.explanation,
                    "thresholds": self.thresholds.as_dict(),
                    "reading": {"value": int(row.value), "measured_at": iso(row.measured_at)},
                    "previous": [{"value": v, "measured_at": iso(m)} for v, m in previous],
                    "held_at": iso(now),
                },
            )
        # Only for the few rows that trip a rule: one a recount or a release already decided
        # to send goes through, or it would be held again for the same reading.
        for row_id in decided(database, list(kept)) if kept else ():
            del kept[row_id]
        return kept

    def observe(
        self, database: Any, rows: Sequence[LedgerRow], answers: Sequence[SendResult]
    ) -> None:
        """Nothing to learn from Stripe's answers: the history is the ledger's sent rows."""

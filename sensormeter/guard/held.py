"""Held rows in the ledger: find them, release them, supersede them, replace their reading.

A held row has never left, so until it is sent its value and stamp may still change: a
recount replaces them (the first reading stays in the evidence). What it may never do is go
out older than a report already delivered for its customer (Stripe's ``last`` meter would
bill the older value): such a row is ``superseded`` instead. Every change here is made only
while the row is still ``held``, so a recount and a release racing each other change it once.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import peewee

from ..models import MeterReport, tuples, utcnow
from .gate import GATE, iso, moment


@dataclass
class HeldRow:
    """A held ledger row, with what is needed to explain, recount or release it."""

    id: int
    organization_id: str
    identifier: str
    event_identifier: str | None
    event_name: str
    value: int
    event_value: int | None
    customer: str
    measured_at: datetime
    kind: str
    period_hour: datetime | None
    evidence: dict[str, Any]
    updated_at: datetime

    @property
    def event(self) -> str:
        """The Stripe event the row goes out in (shared by a customer's parts)."""
        return self.event_identifier or self.identifier

    @property
    def by_guard(self) -> bool:
        """Whether the anomaly guard held it (and so the recount may send it)."""
        return self.evidence.get("gate") == GATE

    @property
    def previous(self) -> list[int]:
        """The delivered values it was judged against, newest first."""
        return [int(p["value"]) for p in self.evidence.get("previous", [])]

    @property
    def explanation(self) -> str:
        """Why it was held, in a sentence ("dropped to 0 from 15")."""
        return str(self.evidence.get("explanation") or self.evidence.get("reason") or "held")


_COLUMNS = (
    MeterReport.id,
    MeterReport.organization_id,
    MeterReport.identifier,
    MeterReport.event_identifier,
    MeterReport.event_name,
    MeterReport.value,
    MeterReport.event_value,
    MeterReport.stripe_customer_id,
    MeterReport.measured_at,
    MeterReport.kind,
    MeterReport.period_hour,
    MeterReport.evidence,
    MeterReport.updated_at,
)


def _evidence(text: str | None) -> dict[str, Any]:
    try:
        facts = json.loads(text) if text else {}
    except ValueError:
        return {}
    return facts if isinstance(facts, dict) else {}


def _held(row: tuple[Any, ...]) -> HeldRow:
    values = list(row)
    values[11] = _evidence(values[11])  # the evidence column, as JSON text
    return HeldRow(*values)


def held_rows(
    *,
    ids: Sequence[int] | None = None,
    organization_id: str | None = None,
    event_keys: Sequence[str] | None = None,
    held_before: datetime | None = None,
    kind: str | None = None,
    limit: int | None = None,
) -> list[HeldRow]:
    """Held rows, oldest reading first; narrowed to ids, one organization, events, age, kind.

    Found through the ``status`` index: held rows are few, unless a fleet-wide glitch held
    every report of an hour, which is why callers that list them pass a ``limit``.
    """
    condition = MeterReport.status == MeterReport.HELD
    if ids is not None:
        condition &= MeterReport.id.in_(list(ids))
    if organization_id is not None:
        condition &= MeterReport.organization_id == organization_id
    if event_keys is not None:
        keys = list(event_keys)
        condition &= MeterReport.identifier.in_(keys) | MeterReport.event_identifier.in_(keys)
    if held_before is not None:
        condition &= MeterReport.updated_at <= held_before
    if kind is not None:
        condition &= MeterReport.kind == kind
    query = (
        MeterReport.select(*_COLUMNS)
        .where(condition)
        .order_by(MeterReport.measured_at, MeterReport.id)
    )
    if limit is not None:
        query = query.limit(limit)
    return [_held(row) for row in tuples(query)]


def count_held() -> dict[str, int]:
    """How many rows are held, by kind of report (hourly, on_demand, period_close)."""
    query = (
        MeterReport.select(MeterReport.kind, peewee.fn.COUNT(MeterReport.id))
        .where(MeterReport.status == MeterReport.HELD)
        .group_by(MeterReport.kind)
    )
    return {str(kind): int(n) for kind, n in tuples(query)}


def by_event(rows: Iterable[HeldRow]) -> dict[str, list[HeldRow]]:
    """The rows grouped by the Stripe event they go out in, every held part of it included.

    A shared customer's event goes out whole: releasing or recounting one part takes the
    event's other held parts along.
    """
    rows = list(rows)
    if not rows:
        return {}
    keys = sorted({row.event for row in rows})
    events: dict[str, list[HeldRow]] = defaultdict(list)
    for row in held_rows(event_keys=keys):
        events[row.event].append(row)
    return dict(events)


def newest_deliveries(events: dict[str, list[HeldRow]]) -> dict[str, datetime]:
    """For each event, the stamp of the newest report delivered for its customer, if any.

    Read from the sent rows of the event's organizations under the event's customer: one
    grouped query through the ``organization_id`` index.
    """
    rows = [row for parts in events.values() for row in parts]
    if not rows:
        return {}
    query = (
        MeterReport.select(
            MeterReport.organization_id,
            MeterReport.stripe_customer_id,
            peewee.fn.MAX(MeterReport.measured_at),
        )
        .where(
            (MeterReport.status == MeterReport.SENT)
            & MeterReport.organization_id.in_(sorted({row.organization_id for row in rows}))
            & MeterReport.event_name.in_(sorted({row.event_name for row in rows}))
        )
        .group_by(MeterReport.organization_id, MeterReport.stripe_customer_id)
    )
    newest = {(str(org), str(customer)): moment(at) for org, customer, at in tuples(query)}
    found: dict[str, datetime] = {}
    for key, parts in events.items():
        stamps = [
            newest[(row.organization_id, row.customer)]
            for row in parts
            if (row.organization_id, row.customer) in newest
        ]
        if stamps:
            found[key] = max(stamps)
    return found


def _update(database: peewee.Database, row: HeldRow, status: str, changes: dict[Any, Any]) -> bool:
    """Write a held row's new status and evidence (and other changes) if it is still held."""
    fields = {
        MeterReport.status: status,
        MeterReport.evidence: json.dumps(row.evidence, sort_keys=True, default=str),
        MeterReport.updated_at: utcnow(),
        **changes,
    }
    done = (
        MeterReport.update(fields)
        .where((MeterReport.id == row.id) & (MeterReport.status == MeterReport.HELD))
        .execute(database)
    )
    return bool(done)


def supersede(database: peewee.Database, parts: Sequence[HeldRow], newer: datetime) -> list[int]:
    """Mark an event's held parts ``superseded`` by a delivery stamped ``newer``; their ids."""
    changed = []
    with database.atomic():
        for row in parts:
            row.evidence["superseded"] = {"newer_delivery": iso(newer), "at": iso(utcnow())}
            if _update(database, row, MeterReport.SUPERSEDED, {}):
                changed.append(row.id)
    return changed


def release(database: peewee.Database, parts: Sequence[HeldRow], by: str) -> list[int]:
    """Make an event's held parts sendable as they are (pending); the guard lets them pass."""
    changed = []
    with database.atomic():
        for row in parts:
            row.evidence["released"] = {"by": by, "at": iso(utcnow())}
            if _update(database, row, MeterReport.PENDING, {}):
                changed.append(row.id)
    return changed


def replace_reading(
    database: peewee.Database,
    parts: Sequence[HeldRow],
    counts: dict[str, int],
    measured_at: datetime,
    outcome: str,
) -> list[int]:
    """Give an event's held parts the recount's reading and make them sendable; their ids.

    The first reading stays in the evidence (``reading``); the recount's is added
    (``recount``). A shared customer's event gets the sum of its parts' new counts.
    """
    shared = any(row.event_identifier for row in parts)
    total = sum(counts[row.organization_id] for row in parts)
    changed = []
    with database.atomic():
        for row in parts:
            value = counts[row.organization_id]
            row.evidence["recount"] = {
                "value": value,
                "measured_at": iso(measured_at),
                "outcome": outcome,
                "at": iso(utcnow()),
            }
            changes: dict[Any, Any] = {
                MeterReport.value: value,
                MeterReport.measured_at: measured_at,
            }
            if shared:
                changes[MeterReport.event_value] = total
            if _update(database, row, MeterReport.PENDING, changes):
                changed.append(row.id)
    return changed

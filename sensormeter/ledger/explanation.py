"""Explaining an organization's bill hour by hour, from the ledger and the billable history.

``sensormeter explain`` prints what this builds: for each UTC hour, what was reported (value,
identifier, kind, status, Stripe request id, when sent) or why nothing was (not billable then,
held by the guard, customer quarantined, not reported yet and whether catch-up will reach it,
beyond Stripe's 35 days, before what the ledger keeps), and the on-demand and period-close
reports stamped in the hour. It reads with three queries whatever the range: the
organization's ledger rows of the range, its billable intervals, and the quarantines of its
customers.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import peewee

from ..defaults import MAX_PAST_HOURS
from ..hours import format_hour, hour_start
from ..models import BillableInterval, MeterReport, Quarantine
from .history import RUNS
from .retention import Reach
from .sentences import (
    Reported,
    day_hour,
    describe_other,
    describe_report,
    naive,
    quarantine_of,
    quarantine_text,
    removed_text,
)

HOUR = timedelta(hours=1)

# What an hour's line says when no hourly report is in the ledger for it.
NOT_BILLABLE = "not_billable"  # the history has it not billable then
BEFORE_HISTORY = "before_history"  # earlier than anything the history knows of it
IN_PROGRESS = "in_progress"  # the current hour: its report may still be on its way
CATCHUP = "catchup"  # billable, not reported; catch-up will report it
MISSED = "missed"  # billable, not reported, beyond catch-up: a backfill reports it
OUT_OF_WINDOW = "out_of_window"  # billable, not reported, beyond Stripe's 35 days
CUSTOMER_QUARANTINED = "customer_quarantined"  # billable, but its customer is quarantined
REMOVED = "removed"  # before the first hour the ledger keeps (SENSORMETER_RETENTION_DAYS)


@dataclass(frozen=True)
class HourLine:
    """One UTC hour: its state (a ledger status, or why there is no row) and the sentence."""

    hour: datetime
    state: str
    text: str
    report: Reported | None = None
    others: list[Reported] = field(default_factory=list)  # on demand, period close, ...
    notes: list[str] = field(default_factory=list)  # a sentence for each of ``others``

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready facts."""
        return {
            "hour": format_hour(self.hour),
            "state": self.state,
            "text": self.text,
            "report": None if self.report is None else self.report.as_dict(),
            "other_reports": [
                {**o.as_dict(), "text": note}
                for o, note in zip(self.others, self.notes, strict=True)
            ],
        }


@dataclass(frozen=True)
class Interval:
    """A stretch of hours the history has the organization billable under one customer."""

    customer: str
    first_hour: datetime
    last_hour: datetime


@dataclass(frozen=True)
class Explanation:
    """Every hour of the range, with the organization's history and its state now."""

    organization_id: str
    first: datetime
    last: datetime
    lines: list[HourLine]
    history: list[Interval]
    not_billable_now: str | None  # None: billable now
    reach: Reach = Reach(0, None)

    @property
    def notice(self) -> str | None:
        """The retention notice, when the range reaches back before the first kept hour."""
        return self.reach.notice(self.first)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready facts."""
        return {
            "organization_id": self.organization_id,
            "since": format_hour(self.first),
            "until": format_hour(self.last),
            **self.reach.as_dict(self.first),
            "billable_now": self.not_billable_now is None,
            "not_billable_reason": self.not_billable_now,
            "history": [
                {
                    "customer": i.customer,
                    "first_hour": format_hour(i.first_hour),
                    "last_hour": format_hour(i.last_hour),
                }
                for i in self.history
            ],
            "hours": [line.as_dict() for line in self.lines],
        }


def _evidence(raw: str | None) -> dict[str, Any] | None:
    if not raw:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return {"text": raw}
    return data if isinstance(data, dict) else {"value": data}


_COLUMNS = (
    MeterReport.id,
    MeterReport.kind,
    MeterReport.identifier,
    MeterReport.event_name,
    MeterReport.value,
    MeterReport.status,
    MeterReport.stripe_customer_id,
    MeterReport.measured_at,
    MeterReport.sent_at,
    MeterReport.stripe_request_id,
    MeterReport.attempts,
    MeterReport.last_error,
    MeterReport.evidence,
    MeterReport.event_identifier,
    MeterReport.event_value,
    MeterReport.period_hour,
)


def read_rows(
    database: peewee.Database, organization_id: str, first: datetime, last: datetime
) -> list[tuple[datetime, Reported]]:
    """The organization's rows of the range, each with the hour it belongs to (one query).

    An hourly row belongs to its ``period_hour``; any other row to the hour it is stamped in.
    """
    end = last + HOUR
    hourly = MeterReport.kind == MeterReport.HOURLY
    query = (
        MeterReport.select(*_COLUMNS)
        .where(
            (MeterReport.organization_id == organization_id)
            & (
                (hourly & (MeterReport.period_hour >= first) & (MeterReport.period_hour <= last))
                | (~hourly & (MeterReport.measured_at >= first) & (MeterReport.measured_at < end))
            )
        )
        .order_by(MeterReport.measured_at, MeterReport.id)
    )
    rows = []
    for *columns, period_hour in query.tuples().execute(database):
        columns[7], columns[8] = naive(columns[7]), naive(columns[8])
        columns[12] = _evidence(columns[12])
        report = Reported(*columns)
        belongs = naive(period_hour) if period_hour is not None else None
        rows.append((belongs or hour_start(report.measured_at), report))
    return rows


def read_history(
    database: peewee.Database, organization_id: str, first: datetime, last: datetime
) -> tuple[list[Interval], list[Interval]]:
    """The organization's billable intervals, and the hours complete hourly runs recorded in
    first..last (one query; oldest first)."""
    runs = (
        (BillableInterval.organization_id == RUNS)
        & (BillableInterval.last_hour >= first)
        & (BillableInterval.first_hour <= last)
    )
    query = (
        BillableInterval.select(
            BillableInterval.organization_id,
            BillableInterval.stripe_customer_id,
            BillableInterval.first_hour,
            BillableInterval.last_hour,
        )
        .where((BillableInterval.organization_id == organization_id) | runs)
        .order_by(BillableInterval.first_hour)
    )
    mine: list[Interval] = []
    recorded: list[Interval] = []
    for org, customer, a, b in query.tuples().execute(database):
        interval = Interval(str(customer), naive(a) or datetime.min, naive(b) or datetime.min)
        (recorded if org == RUNS else mine).append(interval)
    return mine, recorded


def read_quarantines(
    database: peewee.Database, customers: Sequence[str], event_name: str
) -> list[Quarantine]:
    """Quarantines of these customers and of the meter, newest first (one query)."""
    query = (
        Quarantine.select()
        .where(
            ((Quarantine.scope == Quarantine.CUSTOMER) & Quarantine.subject.in_(list(customers)))
            | ((Quarantine.scope == Quarantine.METER) & (Quarantine.subject == event_name))
        )
        .order_by(Quarantine.since.desc())
    )
    return list(query.execute(database))


@dataclass(frozen=True)
class Context:
    """What an explanation needs beyond the tables: the moment, the meter, catch-up's reach."""

    now: datetime
    event_name: str
    catchup: tuple[datetime, datetime] | None  # first and last hour catch-up looks at
    catchup_hours: int
    not_billable_now: str | None  # why not billable now (the usage source); None: billable
    reach: Reach = Reach(0, None)  # the first hour the ledger keeps


def explain(
    database: peewee.Database,
    organization_id: str,
    first: datetime,
    last: datetime,
    context: Context,
) -> Explanation:
    """Explain each hour from ``first`` to ``last`` (both included) for one organization."""
    rows = read_rows(database, organization_id, first, last)
    history, runs = read_history(database, organization_id, first, last)
    customers = sorted({r.customer for _, r in rows} | {i.customer for i in history})
    quarantines = read_quarantines(database, customers, context.event_name)
    hourly: dict[datetime, Reported] = {}
    others: dict[datetime, list[Reported]] = {}
    for hour, report in rows:
        mine = report.kind == MeterReport.HOURLY and report.event_name == context.event_name
        if mine and hour not in hourly:
            hourly[hour] = report
        else:
            others.setdefault(hour, []).append(report)
    lines = []
    hour = first
    while hour <= last:
        found = hourly.get(hour)
        if found is not None:
            state, text = found.status, describe_report(found, quarantines, organization_id)
            if state == MeterReport.FAILED:
                text += _resend(hour, context, organization_id)
        elif context.reach.removed(hour):
            # Its rows and history may have been removed: no record is no evidence of a miss.
            state, text = REMOVED, f"nothing known: {removed_text(context.reach)}"
        else:
            state, text = _why_nothing(hour, history, runs, quarantines, context, organization_id)
        extra = others.get(hour, [])
        notes = [describe_other(o, quarantines, organization_id) for o in extra]
        lines.append(HourLine(hour, state, text, found, extra, notes))
        hour += HOUR
    return Explanation(
        organization_id, first, last, lines, history, context.not_billable_now, context.reach
    )


def _resend(hour: datetime, context: Context, organization_id: str) -> str:
    """Who sends a failed hourly report again: catch-up inside its window, else a person."""
    if context.catchup is not None and context.catchup[0] <= hour <= context.catchup[1]:
        return "; catch-up sends it again"
    return f"; 'sensormeter retry-failed --org {organization_id}' sends it again"


def _covering(history: Sequence[Interval], hour: datetime) -> Interval | None:
    """The interval that holds ``hour``, if any (they never overlap)."""
    index = bisect.bisect_right([i.first_hour for i in history], hour) - 1
    if index >= 0 and history[index].last_hour >= hour:
        return history[index]
    return None


def _why_nothing(
    hour: datetime,
    history: Sequence[Interval],
    runs: Sequence[Interval],
    quarantines: Sequence[Quarantine],
    context: Context,
    organization_id: str,
) -> tuple[str, str]:
    """Why an hour has no hourly report: not billable then, or billable and not sent (yet)."""
    interval = _covering(history, hour)
    known_until = history[-1].last_hour if history else None
    if interval is None and _covering(runs, hour) is not None:
        # The hour's complete hourly run recorded every organization billable then, and
        # this one was not among them.
        now = f"; now: {context.not_billable_now}" if context.not_billable_now else ""
        return NOT_BILLABLE, (
            f"nothing: not billable then (the hourly run of {day_hour(hour)} did not find it "
            f"billable{now})"
        )
    if interval is None:
        if known_until is not None and hour > known_until and context.not_billable_now is None:
            customer = history[-1].customer  # billable now: the history lags the hourly run
        elif not history or hour < history[0].first_hour:
            start = (
                f"it starts {day_hour(history[0].first_hour)}"
                if history
                else "no hourly run has found it billable so far"
            )
            return BEFORE_HISTORY, (
                f"nothing: the billable history has no record of this organization then ({start})"
            )
        elif known_until is not None and hour > known_until:
            return NOT_BILLABLE, (
                f"nothing: not billable since {day_hour(known_until + HOUR)} "
                f"(now: {context.not_billable_now})"
            )
        else:
            after = min(i.first_hour for i in history if i.first_hour > hour)
            before = max(i.last_hour for i in history if i.last_hour < hour)
            return NOT_BILLABLE, (
                f"nothing: not billable then (billable until {day_hour(before + HOUR)}, "
                f"again from {day_hour(after)})"
            )
    else:
        customer = interval.customer
    q = quarantine_of(quarantines, customer, context.event_name, open_only=True)
    began = naive(q.since) if q is not None else None
    if q is not None and (began is None or began < hour + HOUR):
        return CUSTOMER_QUARANTINED, f"nothing sent: {quarantine_text(q)}"
    current = hour_start(context.now)
    if hour >= current:
        return IN_PROGRESS, "nothing yet: this hour's report may still be on its way"
    if hour < current - timedelta(hours=MAX_PAST_HOURS):
        return OUT_OF_WINDOW, (
            "nothing: billable but never reported, and now beyond Stripe's 35-day window: "
            "it can no longer be billed"
        )
    label = format_hour(hour)
    if context.catchup is not None and context.catchup[0] <= hour <= context.catchup[1]:
        return CATCHUP, "nothing yet: billable, not reported; catch-up will report it"
    return MISSED, (
        f"nothing: billable, not reported, and beyond catch-up's {context.catchup_hours} hours: "
        f"'sensormeter backfill --since {label} --until {label} --org {organization_id}'"
    )

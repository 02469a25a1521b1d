"""``sensormeter explain``: each hour of an organization, from the ledger and the history."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import peewee
import pytest

from sensormeter import ledger
from sensormeter.hours import format_hour, hour_start
from sensormeter.ledger import history
from sensormeter.ledger.explanation import Context, explain
from sensormeter.models import BillableInterval, MeterReport, Quarantine, utcnow
from sensormeter.settings import Settings

from .conftest import cli_env, count_queries
from .factories import make_org
from .test_cli import one_error_line, sensormeter

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
EVENT = "active_sensors"
H = timedelta(hours=1)
D = timedelta(days=1)


def report(
    org: str,
    hour: datetime,
    status: str,
    value: int,
    *,
    kind: str = MeterReport.HOURLY,
    stamp: datetime | None = None,
    evidence: dict[str, Any] | None = None,
    **columns: Any,
) -> MeterReport:
    """A ledger row as a report job (or a gate) leaves it."""
    measured = stamp or hour + timedelta(seconds=2)
    return MeterReport.create(
        organization_id=org,
        event_name=columns.pop("event_name", EVENT),
        value=value,
        identifier=ledger.hourly_identifier(org, EVENT, hour)
        if kind == MeterReport.HOURLY
        else f"{EVENT}-{org}-r{kind}-{measured:%Y%m%dT%H%M%S}",
        kind=kind,
        period_hour=hour if kind == MeterReport.HOURLY else None,
        stripe_customer_id=f"cus_{org}",
        measured_at=measured,
        status=status,
        sent_at=measured + timedelta(seconds=5) if status == MeterReport.SENT else None,
        stripe_request_id=f"req_{measured:%d%H%M}" if status == MeterReport.SENT else None,
        evidence=None if evidence is None else json.dumps(evidence),
        **columns,
    )


def interval(org: str, first: datetime, last: datetime) -> None:
    """The history has ``org`` billable under cus_<org> from ``first`` to ``last``."""
    BillableInterval.create(
        organization_id=org, stripe_customer_id=f"cus_{org}", first_hour=first, last_hour=last
    )


def acme(now: datetime) -> dict[str, datetime]:
    """acme, past due now, with a hour of each kind; returns the hours by what they show.

    Every hour is at least 3 hours from now and from catch-up's edges, so a test that crosses
    an hour boundary still finds each where it was put.
    """
    c = hour_start(now)
    make_org("acme", status="past_due", active=40)
    interval("acme", c - 37 * D, c - 3 * D)
    interval("acme", c - 30 * H, c - 5 * H)
    hours = {
        "before_history": c - 38 * D,
        "out_of_window": c - 36 * D,
        "missed": c - 100 * H,
        "gap": c - 40 * H,
        "sent": c - 30 * H,
        "held": c - 29 * H,
        "quarantined": c - 28 * H,
        "close": c - 25 * H,
        "catchup": c - 20 * H,
        "failed": c - 15 * H,
        "trailing": c - 3 * H,
    }
    report("acme", hours["sent"], MeterReport.SENT, 40)
    report(
        "acme",
        hours["failed"],
        MeterReport.FAILED,
        40,
        attempts=3,
        last_error="APIError: Injected error.",
    )
    report(
        "acme",
        hours["held"],
        MeterReport.HELD,
        0,
        evidence={  # as the guard writes it (sensormeter/guard/gate.py)
            "gate": "guard",
            "rule": "drop_to_zero",
            "explanation": "dropped to 0 from 15",
            "thresholds": {"drop_floor": 5},
            "reading": {"value": 0, "measured_at": "2026-11-30T09:00:02+00:00"},
            "previous": [
                {"value": v, "measured_at": "2026-11-30T08:00:02+00:00"} for v in (15, 15, 14)
            ],
        },
    )
    report(
        "acme",
        hours["quarantined"],
        MeterReport.QUARANTINED,
        40,
        evidence={"code": "meter_event_customer_not_found"},
    )
    Quarantine.create(
        scope=Quarantine.CUSTOMER,
        subject="cus_acme",
        code="meter_event_customer_not_found",
        reason="No such customer: 'cus_acme'",
        since=hours["quarantined"] + timedelta(minutes=1),
        released_at=hours["quarantined"] + 2 * H,
    )
    # The period closed at the end of hour "close": its report is stamped at its last second.
    report(
        "acme",
        hours["close"],
        MeterReport.SENT,
        41,
        kind=MeterReport.PERIOD_CLOSE,
        stamp=hours["close"] + H - timedelta(seconds=1),
    )
    report("acme", hours["close"], MeterReport.SENT, 41)
    return hours


def run(settings: Settings, *args: str) -> dict[str, Any]:
    """``sensormeter explain --json ...``, parsed."""
    done = sensormeter(cli_env(settings), "explain", *args, "--json")
    assert done.returncode == 0, done.stderr
    facts: dict[str, Any] = json.loads(done.stdout)
    return facts


class TestExplain:
    def test_each_kind_of_hour_says_what_happened(
        self, settings: Settings, database: peewee.Database
    ) -> None:
        """Sent, held, quarantined, close, not billable, catch-up, missed, out of 35 days."""
        hours = acme(utcnow())
        first, last = hours["before_history"], hours["trailing"]
        facts = run(settings, "acme", "--since", format_hour(first), "--until", format_hour(last))
        assert (facts["since"], facts["until"]) == (format_hour(first), format_hour(last))
        assert facts["billable_now"] is False
        assert "past_due" in facts["not_billable_reason"]
        lines = {line["hour"]: line for line in facts["hours"]}
        assert len(lines) == (last - first) // H + 1
        state = {name: lines[format_hour(hour)]["state"] for name, hour in hours.items()}
        assert state == {
            "before_history": "before_history",
            "out_of_window": "out_of_window",
            "missed": "missed",
            "gap": "not_billable",
            "sent": "sent",
            "held": "held",
            "quarantined": "quarantined",
            "close": "sent",
            "catchup": "catchup",
            "failed": "failed",
            "trailing": "not_billable",
        }
        sent = lines[format_hour(hours["sent"])]["report"]
        row = MeterReport.get(MeterReport.period_hour == hours["sent"])
        assert (sent["value"], sent["identifier"], sent["kind"], sent["status"]) == (
            40,
            row.identifier,
            "hourly",
            "sent",
        )
        assert sent["stripe_request_id"] == row.stripe_request_id
        assert sent["sent_at"] == row.sent_at.isoformat() + "+00:00"
        held = lines[format_hour(hours["held"])]
        assert held["report"]["evidence"]["rule"] == "drop_to_zero"
        assert [p["value"] for p in held["report"]["evidence"]["previous"]] == [15, 15, 14]
        [close] = lines[format_hour(hours["close"])]["other_reports"]
        assert (close["kind"], close["value"], close["status"]) == ("period_close", 41, "sent")
        stamp = hours["close"] + H - timedelta(seconds=1)
        assert close["measured_at"] == stamp.isoformat() + "+00:00"
        # Nothing lies outside the range asked for.
        assert all(first <= datetime.strptime(h, "%Y-%m-%dT%H") <= last for h in lines)

    def test_the_text_is_written_for_the_person_who_asks(
        self, settings: Settings, database: peewee.Database
    ) -> None:
        """The sentences: sent with its time and request id, held with its rule, and why not."""
        hours = acme(utcnow())
        first, last = hours["before_history"], hours["trailing"]
        done = sensormeter(
            cli_env(settings),
            "explain",
            "acme",
            "--since",
            format_hour(first),
            "--until",
            format_hour(last),
        )
        assert done.returncode == 0, done.stderr
        # A line per day, then one per hour of it.
        days = [line for line in done.stdout.splitlines()[1:] if not line.startswith(" ")]
        every = sorted({(first + n * H).date() for n in range((last - first) // H + 1)})
        assert days == [f"{day:%Y-%m-%d}" for day in every]
        out = done.stdout
        row = MeterReport.get(MeterReport.period_hour == hours["sent"])
        sent = (
            f"{hours['sent']:%H:%M}  40 sensors  "
            f"sent {row.sent_at:%H:%M:%S} ({row.stripe_request_id})"
        )
        assert sent in out
        rule = "drop_to_zero: dropped to 0 from 15; previous 15, 15, 14; reading 0"
        assert f"held by the guard, not sent ({rule})" in out
        assert "'sensormeter held release" in out
        assert "kept back, not sent: customer cus_acme quarantined since" in out
        assert "(meter_event_customer_not_found: No such customer: 'cus_acme')" in out
        assert (
            "+ period close (active_sensors), stamped" in out and ":59:59: 41 sensors  sent" in out
        )
        assert "nothing yet: billable, not reported; catch-up will report it" in out
        failed = "40 sensors  failed after 3 attempt(s): APIError: Injected error."
        assert f"{hours['failed']:%H:%M}  {failed}; catch-up sends it again" in out
        assert "beyond Stripe's 35-day window: it can no longer be billed" in out
        missed = format_hour(hours["missed"])
        assert f"'sensormeter backfill --since {missed} --until {missed} --org acme'" in out
        since = hours["trailing"] - H  # the hour after the last interval (c - 5 h)
        reason = "(now: subscription status not billable: past_due)"
        assert f"nothing: not billable since {since:%Y-%m-%d %H}:00 {reason}" in out
        assert "nothing: the billable history has no record of this organization then" in out
        assert "nothing: not billable then (billable until" in out

    def test_default_range_is_the_last_48_hours(
        self, settings: Settings, database: peewee.Database
    ) -> None:
        """Without --since/--until: the hour 48 hours ago through the current hour."""
        make_org("acme", active=3)
        facts = run(settings, "acme")
        hours = [datetime.strptime(line["hour"], "%Y-%m-%dT%H") for line in facts["hours"]]
        assert hours[-1] - hours[0] == 48 * H
        assert hours[-1] in (hour_start(utcnow()), hour_start(utcnow()) - H)

    def test_billable_now_after_the_history_counts_as_billable(
        self, settings: Settings, database: peewee.Database
    ) -> None:
        """The hourly run records an hour when it runs: a billable organization's hours after
        its last interval are billable ones still to report, not 'not billable'."""
        c = hour_start(utcnow())
        make_org("fresh", active=3)
        interval("fresh", c - 10 * H, c - 6 * H)
        report("fresh", c - 6 * H, MeterReport.SENT, 3)
        facts = run(
            settings, "fresh", "--since", format_hour(c - 5 * H), "--until", format_hour(c - 4 * H)
        )
        assert facts["billable_now"] is True
        assert [line["state"] for line in facts["hours"]] == ["catchup", "catchup"]

    def test_an_hour_the_hourly_run_recorded_without_it_is_not_billable_then(
        self, settings: Settings, database: peewee.Database
    ) -> None:
        """A complete hourly run recorded every organization billable at its hour: one it did
        not find (never billable, or not yet) was not billable then, not 'unknown'."""
        c = hour_start(utcnow())
        make_org("late", active=3)
        history.mark_run(database, c - 5 * H)
        history.mark_run(database, c - 4 * H)
        interval("late", c - 4 * H, c - 4 * H)
        report("late", c - 4 * H, MeterReport.SENT, 3)
        facts = run(
            settings, "late", "--since", format_hour(c - 6 * H), "--until", format_hour(c - 4 * H)
        )
        states = [line["state"] for line in facts["hours"]]
        assert states == ["before_history", "not_billable", "sent"]
        assert "the hourly run of" in facts["hours"][1]["text"]
        assert "did not find it billable" in facts["hours"][1]["text"]

    @sqlite_only
    def test_bad_hours_are_one_error_line(
        self, settings: Settings, database: peewee.Database
    ) -> None:
        """A malformed hour, or --since after --until: one line, exit 2."""
        for args in (["--since", "yesterday"], ["--since", "2026-11-02", "--until", "2026-11-01"]):
            done = sensormeter(cli_env(settings), "explain", "acme", *args)
            assert "--since" in one_error_line(done)
            assert done.returncode == 2


class TestQueries:
    def test_three_queries_whatever_the_range(
        self, settings: Settings, database: peewee.Database
    ) -> None:
        """Rows of the range, intervals, quarantines: 35 days cost what 2 hours cost."""
        now = utcnow()
        hours = acme(now)
        context = Context(now, EVENT, (hours["catchup"] - 20 * H, hour_start(now) - H), 48, "x")
        with count_queries() as queries:
            found = explain(database, "acme", hours["out_of_window"], hours["trailing"], context)
        assert queries.selects == 3
        assert len(found.lines) == (hours["trailing"] - hours["out_of_window"]) // H + 1

    def test_a_row_kept_back_by_a_paused_meter_names_the_meter_release(
        self, settings: Settings, database: peewee.Database
    ) -> None:
        """A row the meter's quarantine kept back: the release to run is the meter's."""
        now = utcnow()
        hour = hour_start(now) - 2 * H
        make_org("acme", active=3)
        evidence = {"quarantine": "meter", "subject": EVENT, "code": "archived_meter"}
        report("acme", hour, MeterReport.QUARANTINED, 3, evidence=evidence)
        Quarantine.create(
            scope=Quarantine.METER,
            subject=EVENT,
            code="archived_meter",
            reason="This meter is archived",
            since=hour,
        )
        context = Context(now, EVENT, (hour - 40 * H, hour_start(now) - H), 48, None)
        [line] = explain(database, "acme", hour, hour, context).lines
        assert line.state == MeterReport.QUARANTINED
        assert "meter active_sensors quarantined since" in line.text
        assert "(archived_meter: This meter is archived)" in line.text
        assert line.text.endswith("'sensormeter quarantine release --meter' sends it")

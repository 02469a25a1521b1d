"""``sensormeter reconcile``: the comparison on plain data, and the command against the emulator."""

from __future__ import annotations

import subprocess
import uuid
from datetime import UTC, datetime, timedelta

import peewee
import pytest

from sensormeter.hours import format_hour, hour_start
from sensormeter.ledger import hourly_identifier, on_demand_identifier
from sensormeter.meters import StripeMeterClient
from sensormeter.meters.base import MeterEvent, Outcome, make_stripe_client
from sensormeter.models import MeterReport, utcnow
from sensormeter.reconcile import (
    InvalidWindow,
    LedgerEntry,
    Mismatch,
    StripeHour,
    compare,
    find_meter_id,
    hourly_summaries,
    window,
)
from sensormeter.settings import Settings

from .conftest import SENSORMETER, cli_env

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

H = datetime(2026, 3, 1, 4)  # a fixed UTC hour for the tests on plain data
EVENT = "active_sensors"


def unix(moment: datetime) -> int:
    """Unix seconds of a naive UTC datetime."""
    return int(moment.replace(tzinfo=UTC).timestamp())


def entry(
    id: int,
    measured_at: datetime,
    value: int,
    *,
    org: str = "acme",
    status: str = MeterReport.SENT,
    kind: str = MeterReport.HOURLY,
) -> LedgerEntry:
    """A ledger row as reconciliation reads it (customer cus_<org>)."""
    return LedgerEntry(id, org, f"cus_{org}", value, f"id-{id}", measured_at, status, kind)


def stripe(hour: datetime, value: float, org: str = "acme") -> StripeHour:
    """Stripe's hourly summary for cus_<org>."""
    return StripeHour(f"cus_{org}", hour, value)


def kinds(mismatches: list[Mismatch]) -> list[tuple[str, datetime]]:
    return [(m.kind, m.hour) for m in mismatches]


class TestCompare:
    def test_agreeing_hours_are_clean(self) -> None:
        """Each sent row matched by Stripe's value for its customer and hour: no mismatch."""
        rows = [entry(1, H, 3), entry(2, H + timedelta(hours=1, minutes=5), 4, org="globex")]
        result = compare(rows, [stripe(H, 3), stripe(H + timedelta(hours=1), 4.0, "globex")])
        assert result.clean and result.mismatches == []
        assert (result.customers, result.hours) == (2, 2)

    def test_sent_row_without_summary_is_missing_in_stripe(self) -> None:
        """A sent row whose hour Stripe has nothing for is missing_in_stripe, with its value."""
        [mismatch] = compare([entry(7, H + timedelta(minutes=1), 12)], []).mismatches
        assert mismatch == Mismatch("missing_in_stripe", "acme", "cus_acme", H, 12, "id-7", None)

    def test_other_value_is_value_differs(self) -> None:
        """Stripe holding another value for the hour is value_differs, with both values."""
        [mismatch] = compare([entry(1, H, 12)], [stripe(H, 11.0)]).mismatches
        assert (mismatch.kind, mismatch.ledger_value, mismatch.stripe_value) == (
            "value_differs",
            12,
            11.0,
        )

    @pytest.mark.parametrize("value", [5.0, 0.0])
    def test_summary_without_sent_row_is_unexpected(self, value: float) -> None:
        """A Stripe value (even 0) in an hour without a sent row is unexpected_in_stripe."""
        result = compare([entry(1, H, 5)], [stripe(H, 5), stripe(H + timedelta(hours=2), value)])
        [mismatch] = result.mismatches
        assert mismatch.kind == "unexpected_in_stripe"
        assert (mismatch.hour, mismatch.stripe_value, mismatch.ledger_value) == (
            H + timedelta(hours=2),
            value,
            None,
        )
        assert mismatch.organization_id == "acme"  # the customer's organization in the ledger
        assert result.hours == 2

    @pytest.mark.parametrize("status", ["pending", "failed", "rejected", "held", "quarantined"])
    def test_undelivered_row_is_not_delivered_and_not_expected(self, status: str) -> None:
        """A row not sent is listed as not_delivered; the hour still expects the sent row."""
        rows = [entry(1, H, 3), entry(2, H + timedelta(minutes=30), 9, status=status)]
        [mismatch] = compare(rows, [stripe(H, 3)]).mismatches
        assert (mismatch.kind, mismatch.status, mismatch.ledger_value) == (
            "not_delivered",
            status,
            9,
        )
        assert (mismatch.identifier, mismatch.stripe_value) == ("id-2", 3.0)

    def test_superseded_row_is_not_listed(self) -> None:
        """A superseded row is never to be sent (a newer report went out instead): no line."""
        rows = [entry(1, H, 3, status="superseded"), entry(2, H + timedelta(minutes=30), 9)]
        assert compare(rows, [stripe(H, 9)]).mismatches == []

    def test_last_means_latest_timestamp_not_latest_row(self) -> None:
        """The expected value is the row measured last in the hour, not the row written last."""
        rows = [entry(1, H + timedelta(minutes=50), 7), entry(2, H + timedelta(minutes=10), 3)]
        assert compare(rows, [stripe(H, 7)]).clean
        [mismatch] = compare(rows, [stripe(H, 3)]).mismatches
        assert (mismatch.kind, mismatch.ledger_value, mismatch.identifier) == (
            "value_differs",
            7,
            "id-1",
        )

    def test_on_demand_row_later_in_the_hour_wins(self) -> None:
        """An on-demand report after the hourly one in the same hour is what Stripe bills."""
        hourly = entry(1, H + timedelta(seconds=5), 5)
        on_demand = entry(2, H + timedelta(minutes=40), 8, kind=MeterReport.ON_DEMAND)
        assert compare([hourly, on_demand], [stripe(H, 8)]).clean
        [mismatch] = compare([hourly, on_demand], [stripe(H, 5)]).mismatches
        assert (mismatch.ledger_value, mismatch.identifier) == (8, "id-2")

    def test_timestamp_tie_goes_to_the_higher_id_and_is_reported(self) -> None:
        """Two events stamped the same second: the higher id is expected, the tie is flagged."""
        rows = [entry(9, H, 4), entry(3, H, 6)]
        differs, tie = compare(rows, [stripe(H, 6)]).mismatches
        assert (differs.kind, differs.ledger_value, differs.stripe_value) == (
            "value_differs",
            4,
            6.0,
        )
        assert (tie.kind, tie.identifier) == ("same_timestamp", "id-3,id-9")
        # Even when Stripe happens to hold the expected value, the tie is not "clean".
        [only] = compare(rows, [stripe(H, 4)]).mismatches
        assert only.kind == "same_timestamp"

    def test_shared_customer_event_is_compared_once_with_its_sum(self) -> None:
        """Two organizations' parts of one customer event: Stripe must hold their sum."""
        parts = [
            LedgerEntry(1, "a", "cus_x", 10, "id-a", H, "sent", "hourly", "ev+cus_x", 11),
            LedgerEntry(2, "b", "cus_x", 1, "id-b", H, "sent", "hourly", "ev+cus_x", 11),
        ]
        assert compare(parts, [StripeHour("cus_x", H, 11)]).clean
        [mismatch] = compare(parts, [StripeHour("cus_x", H, 1)]).mismatches
        assert (mismatch.kind, mismatch.organization_id, mismatch.ledger_value) == (
            "value_differs",
            "a,b",
            11,
        )
        assert mismatch.identifier == "ev+cus_x"

    def test_describe_names_every_field(self) -> None:
        """A mismatch prints as one line: kind, organization, customer, hour, both values."""
        line = Mismatch("value_differs", "acme", "cus_acme", H, 12, "id-1", 11.0).describe()
        assert line == (
            "value_differs org=acme customer=cus_acme hour=2026-03-01T04 "
            "ledger=12 identifier=id-1 stripe=11"
        )
        missing = Mismatch("not_delivered", "acme", "cus_acme", H, 2, "id-2", None, "failed")
        assert missing.describe().endswith("identifier=id-2 status=failed stripe=none")


class TestWindow:
    NOW = datetime(2026, 3, 3, 10, 25, 7)

    def test_defaults_are_whole_hours_48_hours_back_through_now(self) -> None:
        """Without options: the hour 48 hours ago up to and including the current hour."""
        assert window(None, None, self.NOW) == (datetime(2026, 3, 1, 10), datetime(2026, 3, 3, 11))

    def test_hours_and_days(self) -> None:
        """Bounds are UTC hours or days (a day's first hour); --until's hour is included."""
        assert window("2026-03-01T04", "2026-03-01T04", self.NOW) == (H, H + timedelta(hours=1))
        assert window("2026-03-01", "2026-03-02", self.NOW) == (
            datetime(2026, 3, 1),
            datetime(2026, 3, 2, 1),
        )

    @pytest.mark.parametrize(
        ("since", "until", "named"),
        [
            ("2026-13-01", None, "--since"),
            ("yesterday", None, "--since"),
            ("2026-03-01T04:30", None, "--since"),
            (None, "2026-03-01T25", "--until"),
            ("2026-03-02", "2026-03-01T23", "--since 2026-03-02T00 is after"),
        ],
    )
    def test_bad_bounds_name_the_option(self, since: str, until: str, named: str) -> None:
        """A malformed bound or an empty window raises InvalidWindow naming the option."""
        with pytest.raises(InvalidWindow, match=named):
            window(since, until, self.NOW)


# ---------------------------------------------------------------- the real emulator and ledger


def ledger_row(
    org: str,
    measured_at: datetime,
    value: int,
    *,
    status: str = MeterReport.SENT,
    kind: str = MeterReport.HOURLY,
) -> MeterReport:
    """Insert a ledger row the way the reporter writes one (customer cus_<org>)."""
    hour = hour_start(measured_at)
    if kind == MeterReport.HOURLY:
        identifier = hourly_identifier(org, EVENT, hour)
    else:
        identifier = on_demand_identifier(org, EVENT, uuid.uuid4().hex)
    return MeterReport.create(
        organization_id=org,
        event_name=EVENT,
        value=value,
        identifier=identifier,
        kind=kind,
        period_hour=hour if kind == MeterReport.HOURLY else None,
        stripe_customer_id=f"cus_{org}",
        measured_at=measured_at,
        status=status,
        attempts=1,
        sent_at=utcnow() if status == MeterReport.SENT else None,
    )


def deliver(
    settings: Settings, *rows: MeterReport, value: int | None = None, identifier: str = ""
) -> None:
    """Send the rows' events to the emulator over HTTP with the project's v1 meter client.

    ``value`` and ``identifier`` override the row's, to make Stripe disagree with the ledger.
    """
    events = [
        MeterEvent(
            identifier=identifier or row.identifier,
            event_name=row.event_name,
            customer=row.stripe_customer_id,
            value=row.value if value is None else value,
            timestamp=unix(row.measured_at),
        )
        for row in rows
    ]
    results = StripeMeterClient(settings).send_many(events)
    assert all(r.outcome is Outcome.DELIVERED for r in results), results


def reconcile(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``sensormeter reconcile ARGS`` as a subprocess against the test services."""
    return subprocess.run(
        [*SENSORMETER, "reconcile", *args],
        env=cli_env(settings, **env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def lines(done: subprocess.CompletedProcess[str]) -> list[str]:
    return done.stdout.strip().splitlines()


@pytest.fixture
def base() -> datetime:
    """A whole hour well inside Stripe's 35-day window for event timestamps."""
    return hour_start(utcnow()) - timedelta(hours=6)


def span(first: datetime, last: datetime) -> list[str]:
    return ["--since", format_hour(first), "--until", format_hour(last)]


class TestReconcileCommand:
    def test_clean_run_exits_0_with_a_summary(
        self, settings: Settings, database: peewee.Database, base: datetime
    ) -> None:
        """Ledger and emulator agree, an on-demand report late in an hour included: exit 0."""
        acme = [ledger_row("acme", base + timedelta(hours=h, seconds=3), 10 + h) for h in range(3)]
        later = ledger_row("acme", base + timedelta(minutes=45), 14, kind=MeterReport.ON_DEMAND)
        globex = [ledger_row("globex", base + timedelta(hours=h), 2) for h in (1, 2)]
        deliver(settings, *acme, later, *globex)

        done = reconcile(settings, *span(base, base + timedelta(hours=2)))
        assert done.returncode == 0, done.stdout + done.stderr
        assert lines(done) == [
            f"reconcile {format_hour(base)}..{format_hour(base + timedelta(hours=2))} UTC: "
            "2 customer(s) checked, 5 hour(s) compared, 0 mismatch(es)"
        ]

    def test_each_mismatch_kind_is_a_line_and_exit_1(
        self, settings: Settings, database: peewee.Database, base: datetime
    ) -> None:
        """Missing, differing, unexpected and undelivered hours are each printed; exit 1."""
        hours = [base + timedelta(hours=h) for h in range(5)]
        ledger_row("acme", hours[0], 3)  # marked sent, never reached Stripe
        differs = ledger_row("acme", hours[1], 5)
        deliver(settings, differs, value=6)  # Stripe got another value
        stray = ledger_row("acme", hours[2], 4)
        deliver(settings, stray, identifier="evt-from-elsewhere")
        stray.delete_instance()  # Stripe has an event the ledger knows nothing of
        failed = ledger_row("acme", hours[3], 8, status=MeterReport.FAILED)
        fine = ledger_row("acme", hours[4], 1)
        deliver(settings, fine)

        done = reconcile(settings, *span(hours[0], hours[4]))
        assert done.returncode == 1, done.stdout + done.stderr
        label = [format_hour(h) for h in hours]
        assert lines(done) == [
            f"missing_in_stripe org=acme customer=cus_acme hour={label[0]} ledger=3 "
            f"identifier=active_sensors-acme-{label[0]} stripe=none",
            f"value_differs org=acme customer=cus_acme hour={label[1]} ledger=5 "
            f"identifier=active_sensors-acme-{label[1]} stripe=6",
            f"unexpected_in_stripe org=acme customer=cus_acme hour={label[2]} ledger=none "
            "identifier=- stripe=4",
            f"not_delivered org=acme customer=cus_acme hour={label[3]} ledger=8 "
            f"identifier={failed.identifier} status=failed stripe=none",
            f"reconcile {label[0]}..{label[4]} UTC: "
            "1 customer(s) checked, 4 hour(s) compared, 4 mismatch(es)",
        ]
        assert done.stderr == ""

    def test_org_narrows_to_its_customer(
        self, settings: Settings, database: peewee.Database, base: datetime
    ) -> None:
        """--org compares only that organization's customer; the others are not read."""
        ledger_row("acme", base, 3)
        ledger_row("globex", base, 4)  # missing too, but not asked for
        done = reconcile(settings, *span(base, base), "--org", "acme")
        assert done.returncode == 1
        assert [line.split()[:2] for line in lines(done)[:-1]] == [
            ["missing_in_stripe", "org=acme"]
        ]
        assert "1 customer(s) checked, 1 hour(s) compared, 1 mismatch(es)" in lines(done)[-1]

    def test_window_bounds_are_whole_hours_until_included(
        self, settings: Settings, database: peewee.Database, base: datetime
    ) -> None:
        """Only [--since, end of --until's hour) is compared, in the ledger and in Stripe."""
        before = ledger_row("acme", base - timedelta(seconds=1), 1)  # the hour before --since
        inside = ledger_row("acme", base + timedelta(minutes=59, seconds=59), 2)
        after = ledger_row("acme", base + timedelta(hours=1), 3)  # the hour after --until
        deliver(settings, before, inside, after)
        before.delete_instance()  # in Stripe only: unexpected if Stripe were asked too wide
        done = reconcile(settings, *span(base, base))
        assert done.returncode == 0, done.stdout
        assert "1 customer(s) checked, 1 hour(s) compared, 0 mismatch(es)" in done.stdout

    def test_more_hours_than_a_page_are_all_read(
        self, settings: Settings, database: peewee.Database, base: datetime
    ) -> None:
        """120 hourly summaries span two pages of 100; the oldest hour, on page 2, is checked."""
        first = base - timedelta(hours=119)
        rows = [ledger_row("acme", first + timedelta(hours=h), 7) for h in range(120)]
        deliver(settings, rows[0], value=99)
        deliver(settings, *rows[1:])

        done = reconcile(settings, *span(first, base))
        assert done.returncode == 1, done.stdout + done.stderr
        assert lines(done) == [
            f"value_differs org=acme customer=cus_acme hour={format_hour(first)} ledger=7 "
            f"identifier={rows[0].identifier} stripe=99",
            f"reconcile {format_hour(first)}..{format_hour(base)} UTC: "
            "1 customer(s) checked, 120 hour(s) compared, 1 mismatch(es)",
        ]

    def test_empty_window_is_clean(self, settings: Settings, database: peewee.Database) -> None:
        """No ledger rows in the default window: nothing to query, exit 0."""
        done = reconcile(settings)
        assert done.returncode == 0, done.stderr
        assert "0 customer(s) checked, 0 hour(s) compared, 0 mismatch(es)" in done.stdout


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    """Check the process failed with a single line on stderr and no traceback; return it."""
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stderr, done.stderr
    [line] = done.stderr.strip().splitlines()
    return line


@sqlite_only
class TestReconcileErrors:
    def test_unknown_meter_is_one_line(self, settings: Settings, database: peewee.Database) -> None:
        """No meter with the configured event name: one line naming it, exit non-zero."""
        done = reconcile(settings, SENSORMETER_METER_EVENT_NAME="gateways")
        line = one_error_line(done)
        assert "no Stripe meter has event_name 'gateways'" in line
        assert done.stdout == ""

    def test_unreachable_stripe_is_one_line(
        self, settings: Settings, database: peewee.Database
    ) -> None:
        """Stripe not answering: one 'cannot reach Stripe' line with the address, exit 2."""
        done = reconcile(settings, STRIPE_API_BASE="http://127.0.0.1:1")
        assert one_error_line(done).startswith("error: cannot reach Stripe at http://127.0.0.1:1")
        assert done.returncode == 2

    @pytest.mark.parametrize(
        "args",
        [["--since", "2026-02-30"], ["--since", "3 days ago"], ["--until", "2026-03-01T4:00"]],
    )
    def test_bad_bound_is_one_line(
        self, settings: Settings, database: peewee.Database, args: list[str]
    ) -> None:
        """A malformed --since/--until: one line naming the option and the forms, no traceback."""
        line = one_error_line(reconcile(settings, *args))
        assert args[0] in line and "YYYY-MM-DDTHH" in line

    def test_missing_key_is_one_line(self, settings: Settings, database: peewee.Database) -> None:
        """Without STRIPE_API_KEY the command says which variable to set."""
        assert "STRIPE_API_KEY" in one_error_line(reconcile(settings, STRIPE_API_KEY=""))


@sqlite_only
class TestStripeReads:
    """The two reads reconcile makes, against the emulator over HTTP."""

    def test_summaries_read_every_page(self, settings: Settings, base: datetime) -> None:
        """With pages of 2, all five hours of a customer come back, newest first."""
        rows = [MeterEvent(f"e{h}", EVENT, "cus_acme", h, unix(base) + h * 3600) for h in range(5)]
        results = StripeMeterClient(settings).send_many(rows)
        assert all(r.outcome is Outcome.DELIVERED for r in results)
        client = make_stripe_client(settings)
        meter_id = find_meter_id(client, EVENT)
        hours = hourly_summaries(
            client, meter_id, ["cus_acme"], base, base + timedelta(hours=5), page_size=2
        )
        assert [(s.hour, s.value) for s in hours] == [
            (base + timedelta(hours=h), float(h)) for h in reversed(range(5))
        ]

"""Quarantine: a customer (or meter) Stripe refuses costs one warning, then no Stripe call.

Stripe accepts an event for a deleted customer or an archived meter and refuses it later, in
the error report of a ``v1.billing.meter.error_report_triggered`` thin event; the emulator
does the same, and the report reaches sensormeter through the signed webhook. Everything
runs for real: the runtime's reporter (quarantine gate included) on SQLite and PostgreSQL,
stripe-python over HTTP to the emulator, and the ``sensormeter`` command as a subprocess.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import peewee
import pytest
import stripe

from sensormeter import handle_stripe_webhook
from sensormeter.emulator import StripeEmulator
from sensormeter.hours import format_hour, hour_start
from sensormeter.logs import capture_logs
from sensormeter.meters import InMemoryMeterClient
from sensormeter.meters.base import Outcome, SendResult, classify_error
from sensormeter.models import MeterReport, Quarantine, Sensor, utcnow
from sensormeter.quarantine import QuarantineGate
from sensormeter.report import Report
from sensormeter.reporter import Reporter
from sensormeter.runtime import Runtime
from sensormeter.settings import Settings
from sensormeter.usage import DatabaseUsageSource

from .conftest import cli_env
from .factories import make_org
from .test_cli import sensormeter
from .test_webhook import SECRET, sign

EVENT = "active_sensors"
COUNTS = {"acme": 4, "globex": 7}
CUSTOMERS = {"acme": "cus_acme", "globex": "cus_globex"}


@pytest.fixture
def orgs(runtime: Runtime) -> Runtime:
    """acme and globex, billable, whose sensors exist since two days (past hours count them)."""
    for org, count in COUNTS.items():
        make_org(org, active=count)
    Sensor.update(created_at=utcnow() - timedelta(days=2)).execute()
    return runtime


def hours_ago(n: int) -> datetime:
    """The start of the UTC hour ``n`` hours before the current one."""
    return hour_start(utcnow()) - timedelta(hours=n)


def run_hour(runtime: Runtime, hour: datetime, orgs: tuple[str, ...] = ("acme", "globex")) -> None:
    """Run the hourly report of ``hour`` for ``orgs`` as a job does."""
    runtime.reporter().run(runtime.database, list(orgs), Report.hourly(hour))


def deliver_error_report(runtime: Runtime, emulator: StripeEmulator) -> None:
    """Stripe's error report of what it refused since the last one, through the webhook."""
    notification = emulator.error_report()
    assert notification is not None, "the emulator refused nothing"
    body = json.dumps(notification)
    handle_stripe_webhook(
        body.encode(),
        sign(body),
        settings=replace(runtime.settings, stripe_webhook_secret=SECRET),
        database=runtime.database,
    )


def status_of(org: str, hour: datetime) -> str:
    row = MeterReport.get(
        (MeterReport.organization_id == org)
        & (MeterReport.period_hour == hour)
        & (MeterReport.kind == MeterReport.HOURLY)
    )
    return str(row.status)


def stripe_events(emulator: StripeEmulator, customer: str) -> list[Any]:
    return [e for e in emulator.events() if e.customer == customer]


def assert_billed_once_per_hour(
    emulator: StripeEmulator, customer: str, count: int, hours: list[datetime]
) -> None:
    """The billing invariant for these hours: one event of the customer stamped inside each,
    carrying the hour's count; and Stripe got the customer's events in time order."""
    events = stripe_events(emulator, customer)
    for hour in hours:
        start = hour.replace(tzinfo=UTC).timestamp()
        inside = [e for e in events if start <= e.timestamp < start + 3600]
        assert [e.value for e in inside] == [count], (format_hour(hour), inside)
    stamps = [e.timestamp for e in events]
    assert stamps == sorted(stamps), "a `last` meter must see a customer's events in order"


def quarantine_acme(runtime: Runtime, emulator: StripeEmulator) -> datetime:
    """acme's customer is deleted in Stripe; its first report is refused; returns that hour."""
    emulator.delete_customer(CUSTOMERS["acme"])
    first = hours_ago(3)
    run_hour(runtime, first)
    # Accepted on the request, as Stripe does: the refusal comes in the error report.
    assert status_of("acme", first) == MeterReport.SENT
    deliver_error_report(runtime, emulator)
    return first


class TestQuarantine:
    def test_a_refused_customer_costs_one_warning_then_no_stripe_call(
        self, orgs: Runtime, emulator: StripeEmulator
    ) -> None:
        """The issue's case: after the error report, acme's reports stay in the ledger."""
        with capture_logs() as logs:
            first = quarantine_acme(orgs, emulator)
            calls = emulator.request_count()
            later = [hours_ago(2), hours_ago(1), hours_ago(0)]
            for hour in later:
                run_hour(orgs, hour)

        assert status_of("acme", first) == MeterReport.REJECTED
        assert [status_of("acme", h) for h in later] == [MeterReport.QUARANTINED] * 3
        assert [status_of("globex", h) for h in later] == [MeterReport.SENT] * 3
        # Only globex reached Stripe after the quarantine: one call per hour.
        assert emulator.request_count() - calls == len(later)
        assert [e.identifier for e in emulator.refused_events()] == [
            f"{EVENT}-acme-{format_hour(first)}"
        ]
        assert_billed_once_per_hour(emulator, "cus_globex", COUNTS["globex"], [first, *later])
        warnings = [e for e in logs if e["log_level"] in ("warning", "error")]
        started = [e for e in warnings if e["event"] == "quarantine.started"]
        assert [(e["customer"], e["organizations"], e["code"]) for e in started] == [
            ("cus_acme", ["acme"], "meter_event_customer_not_found")
        ]
        # The warnings are the report's own (the refused row) and the one quarantine.started.
        assert {e["event"] for e in warnings} == {"webhook.meter_error", "quarantine.started"}
        kept = [e for e in logs if e["event"] == "report.kept_back"]
        assert [e["log_level"] for e in kept] == ["info"] * 3
        row = MeterReport.get(MeterReport.identifier == f"{EVENT}-acme-{format_hour(later[0])}")
        evidence = json.loads(row.evidence)
        assert (evidence["quarantine"], evidence["subject"], evidence["code"]) == (
            "customer",
            "cus_acme",
            "meter_event_customer_not_found",
        )

    def test_a_second_report_for_the_same_customer_opens_nothing_new(
        self, orgs: Runtime, emulator: StripeEmulator
    ) -> None:
        """Stripe reports again (a row sent before the quarantine): still one open quarantine."""
        emulator.delete_customer(CUSTOMERS["acme"])
        run_hour(orgs, hours_ago(2))
        first = emulator.error_report()
        run_hour(orgs, hours_ago(1))  # sent before the first report arrives
        assert first is not None
        with capture_logs() as logs:
            for notification in (first, emulator.error_report()):
                body = json.dumps(notification)
                handle_stripe_webhook(
                    body.encode(),
                    sign(body),
                    settings=replace(orgs.settings, stripe_webhook_secret=SECRET),
                    database=orgs.database,
                )
        assert [e["event"] for e in logs].count("quarantine.started") == 1
        assert Quarantine.select().where(Quarantine.released_at.is_null()).count() == 1


class TestRelease:
    def test_release_refuses_while_missing_then_sends_the_newest_of_each_hour(
        self, orgs: Runtime, emulator: StripeEmulator
    ) -> None:
        """Refused while Stripe still lacks the customer; then held hours go out, in order."""
        quarantine_acme(orgs, emulator)
        held = [hours_ago(2), hours_ago(1), hours_ago(0)]
        for hour in held:
            run_hour(orgs, hour)
        # An on-demand report in the current hour, after its hourly one: the hour's newest.
        orgs.reporter().run(orgs.database, ["acme"], Report.on_demand("asked-now"))
        env = cli_env(orgs.settings)

        listed = sensormeter(env, "quarantine", "--json")
        assert listed.returncode == 0, listed.stderr
        [view] = json.loads(listed.stdout)["customers"]
        in_ledger = MeterReport.select().where(
            (MeterReport.status == MeterReport.QUARANTINED)
            & (MeterReport.stripe_customer_id == "cus_acme")
        )
        assert (view["subject"], view["organizations"], view["code"]) == (
            "cus_acme",
            ["acme"],
            "meter_event_customer_not_found",
        )
        assert view["reports_held"] == in_ledger.count()
        assert view["hours_held"] == len({hour_start(r.measured_at) for r in in_ledger})
        text = sensormeter(env, "quarantine")
        assert "cus_acme (organizations: acme)" in text.stdout
        assert "Stripe has no customer with this id" in text.stdout

        calls = emulator.request_count()
        refused = sensormeter(env, "quarantine", "release", "cus_acme")
        assert refused.returncode == 1
        assert "cus_acme is still deleted in Stripe" in refused.stderr
        assert emulator.request_count() == calls
        assert in_ledger.count() == 4  # three hours and the on-demand report, all still held

        emulator.restore_customer("cus_acme")
        released = sensormeter(env, "quarantine", "release", "cus_acme")
        assert released.returncode == 0, released.stdout + released.stderr
        assert "released cus_acme" in released.stdout
        current = f"{EVENT}-acme-{format_hour(held[-1])}"
        assert f"superseded {current}: a newer report of the same hour" in released.stdout
        assert MeterReport.get(MeterReport.identifier == current).status == "superseded"
        assert [status_of("acme", h) for h in held[:2]] == [MeterReport.SENT] * 2
        assert_billed_once_per_hour(emulator, "cus_acme", COUNTS["acme"], held)
        assert Quarantine.select().where(Quarantine.released_at.is_null()).count() == 0

        # New reports flow again.
        orgs.reporter().run(orgs.database, ["acme"], Report.on_demand("after-release"))
        newest = stripe_events(emulator, "cus_acme")[-1]
        assert newest.identifier.endswith("rafter-release")
        assert sensormeter(env, "quarantine").stdout.startswith("No customer is quarantined")

    def test_a_held_report_older_than_a_delivered_one_is_superseded(
        self, orgs: Runtime, emulator: StripeEmulator
    ) -> None:
        """A retry kept back after a newer report of the customer was delivered never goes out."""
        emulator.delete_customer("cus_acme")
        run_hour(orgs, hours_ago(3), ("acme",))
        report = emulator.error_report()  # names hours_ago(3) only
        emulator.inject(503)
        orgs.reporter().run(
            orgs.database, ["acme"], Report.hourly(hours_ago(2)), final_attempt=False
        )
        assert status_of("acme", hours_ago(2)) == MeterReport.PENDING  # waits for its retry
        emulator.restore_customer("cus_acme")  # support fixes it meanwhile
        run_hour(orgs, hours_ago(1), ("acme",))  # delivered
        assert report is not None
        body = json.dumps(report)
        handle_stripe_webhook(
            body.encode(),
            sign(body),
            settings=replace(orgs.settings, stripe_webhook_secret=SECRET),
            database=orgs.database,
        )
        [retry] = MeterReport.select().where(MeterReport.status == MeterReport.PENDING)
        orgs.reporter().resend(orgs.database, [retry.id])  # the retry meets the quarantine
        assert status_of("acme", hours_ago(2)) == MeterReport.QUARANTINED

        done = sensormeter(cli_env(orgs.settings), "quarantine", "release", "cus_acme")
        assert done.returncode == 0, done.stdout + done.stderr
        assert status_of("acme", hours_ago(2)) == MeterReport.SUPERSEDED
        assert "a newer report of the customer was delivered" in done.stdout
        identifiers = [e.identifier for e in stripe_events(emulator, "cus_acme")]
        assert retry.identifier not in identifiers
        assert_billed_once_per_hour(emulator, "cus_acme", COUNTS["acme"], [hours_ago(1)])

    def test_a_period_closed_while_held_back_is_listed_for_a_manual_correction(
        self, orgs: Runtime, emulator: StripeEmulator
    ) -> None:
        """A close report held past its period end plus the invoice grace changes no bill."""
        quarantine_acme(orgs, emulator)
        grace = orgs.settings.invoice_grace_hours
        end = hour_start(utcnow()) - timedelta(hours=grace + 1)
        orgs.reporter().run(orgs.database, ["acme"], Report.period_close(end))
        [close] = MeterReport.select().where(MeterReport.kind == MeterReport.PERIOD_CLOSE)
        assert close.status == MeterReport.QUARANTINED
        emulator.restore_customer("cus_acme")
        done = sensormeter(cli_env(orgs.settings), "quarantine", "release", "cus_acme")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "Periods whose invoice Stripe finalized while" in done.stdout
        assert (
            f"acme: period ending {end:%Y-%m-%d %H:%M} UTC, {COUNTS['acme']} sensor(s), "
            "close report sent" in done.stdout
        )


class TestPausedMeter:
    def test_an_archived_meter_pauses_sending_and_fails_check_until_released(
        self, orgs: Runtime, emulator: StripeEmulator, database: peewee.Database
    ) -> None:
        """archived_meter: no report is sent at all, check fails, release needs an active meter."""
        emulator.archive_meter(EVENT)
        first = hours_ago(2)
        run_hour(orgs, first)
        with capture_logs() as logs:
            deliver_error_report(orgs, emulator)
        paused = [e for e in logs if e["event"] == "quarantine.meter_paused"]
        assert [(e["log_level"], e["event_name"], e["code"]) for e in paused] == [
            ("warning", EVENT, "archived_meter")
        ]
        calls = emulator.request_count()
        second = hours_ago(1)
        run_hour(orgs, second)
        assert emulator.request_count() == calls
        assert [status_of(o, second) for o in COUNTS] == [MeterReport.QUARANTINED] * 2
        env = cli_env(orgs.settings)

        check = sensormeter(env, "check")
        assert check.returncode == 1
        assert f"sensormeter.check.failed meter_paused: sending to the meter {EVENT}" in (
            check.stdout
        )
        refused = sensormeter(env, "quarantine", "release", "--meter")
        assert refused.returncode == 1
        assert "still archived (inactive) in Stripe" in refused.stderr
        assert emulator.request_count() == calls

        emulator.reactivate_meter(EVENT)
        released = sensormeter(env, "quarantine", "release", "--meter")
        assert released.returncode == 0, released.stdout + released.stderr
        assert [status_of(o, second) for o in COUNTS] == [MeterReport.SENT] * 2
        for org, count in COUNTS.items():
            assert_billed_once_per_hour(emulator, CUSTOMERS[org], count, [second])
        after = sensormeter(env, "check")
        assert "meter_paused" not in after.stdout

    def test_a_quarantined_customer_is_a_notice_of_check_and_a_metric(
        self, orgs: Runtime, emulator: StripeEmulator
    ) -> None:
        """check names the quarantined customers without failing for them; metrics count them."""
        from sensormeter.ops.metrics import make_registry

        quarantine_acme(orgs, emulator)
        check = sensormeter(cli_env(orgs.settings), "check")
        assert (
            "sensormeter.check.notice quarantined_customers: 1 customer(s) refused by Stripe"
            in check.stdout
        )
        assert "meter_paused" not in check.stdout
        registry = make_registry(orgs.settings)
        assert registry.get_sample_value("sensormeter_quarantined_customers") == 1
        assert registry.get_sample_value("sensormeter_meter_paused") == 0


class TestAnswersOnTheRequest:
    """Should Stripe refuse a customer or meter on the request itself, the same happens."""

    @pytest.fixture
    def meter(self) -> InMemoryMeterClient:
        return InMemoryMeterClient()

    @pytest.fixture
    def reporter(self, database: peewee.Database, meter: InMemoryMeterClient) -> Reporter:
        source = DatabaseUsageSource(database, Settings().billable_status_values)
        return Reporter(source, meter, EVENT, [QuarantineGate()])

    def test_classify_error_keeps_stripes_code_and_param(self) -> None:
        """The gate reads Stripe's machine fields, so classify_error passes them on."""
        exc = stripe.InvalidRequestError(
            "No such customer: 'cus_a'",
            "payload[stripe_customer_id]",
            code="resource_missing",
            http_status=400,
        )
        result = classify_error(exc)
        assert (result.outcome, result.code, result.param) == (
            Outcome.REJECTED,
            "resource_missing",
            "payload[stripe_customer_id]",
        )

    @pytest.mark.parametrize(
        ("code", "param", "scope", "subject"),
        [
            ("resource_missing", "payload[stripe_customer_id]", "customer", "cus_acme"),
            ("meter_event_customer_not_found", None, "customer", "cus_acme"),
            ("archived_meter", None, "meter", EVENT),
        ],
    )
    def test_a_refusal_on_the_request_opens_a_quarantine(
        self,
        database: peewee.Database,
        reporter: Reporter,
        meter: InMemoryMeterClient,
        code: str,
        param: str | None,
        scope: str,
        subject: str,
    ) -> None:
        """The refused row is rejected; the next report of the customer makes no attempt."""
        make_org("acme", active=2)
        meter.script = [SendResult(Outcome.REJECTED, "refused", "req_1", 400, code, param)]
        reporter.run(database, ["acme"], Report.on_demand("first"))
        [opened] = Quarantine.select().where(Quarantine.released_at.is_null())
        assert (opened.scope, opened.subject, opened.code) == (scope, subject, code)
        second = reporter.run(database, ["acme"], Report.on_demand("second"))
        assert len(meter.attempts) == 1
        assert second.statuses == {"acme": MeterReport.QUARANTINED}

    def test_a_bad_event_quarantines_nothing(
        self, database: peewee.Database, reporter: Reporter, meter: InMemoryMeterClient
    ) -> None:
        """A refusal of the event itself (a bad value) blames neither customer nor meter."""
        make_org("acme", active=2)
        meter.script = [
            SendResult(Outcome.REJECTED, "Invalid value", "req_1", 400, "parameter_invalid", None)
        ]
        reporter.run(database, ["acme"], Report.on_demand("first"))
        reporter.run(database, ["acme"], Report.on_demand("second"))
        assert Quarantine.select().count() == 0
        assert len(meter.attempts) == 2

"""examples/django: the host's models read through its UsageSource, the device hook, the
webhook view and the Procfile's worker, on SQLite and PostgreSQL with real Redis."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import peewee
import pytest
import redis

from sensormeter.emulator import StripeEmulator
from sensormeter.ledger import hourly_identifier
from sensormeter.models import MeterReport
from sensormeter.settings import Settings
from sensormeter.tasks.fanout import enqueue_fanout
from sensormeter.usage import UsageSource, load_usage_source

from ..test_webhook import ledger_row
from .common import (
    EXAMPLES,
    REJECTION,
    REPORT_JOB,
    WEBHOOK_SECRET,
    error_report,
    framework,
    ledger,
    procfile,
    queued_reports,
    run_procfile,
    run_worker,
    signature,
)

django = framework("django")
PROJECT = EXAMPLES / "django"
SOURCE = "fleet.worker:make_source"  # SENSORMETER_USAGE_SOURCE, as the README sets it
HOUR = datetime(2026, 11, 29, 4)


@pytest.fixture(scope="module")
def project() -> Iterator[None]:
    """Django set up on the example project, as `manage.py` would (once per process)."""
    from django.test.utils import setup_test_environment, teardown_test_environment

    sys.path.insert(0, str(PROJECT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fleetsite.settings")
    django.setup()
    setup_test_environment()  # lets the test client through ALLOWED_HOSTS
    yield
    teardown_test_environment()
    sys.path.remove(str(PROJECT))


def point_django_at(url: str) -> None:
    """Aim Django's default connection at ``url`` (Django reads DATABASES only once)."""
    from django.conf import settings as django_settings
    from django.db import connections
    from fleetsite.settings import database_from_url

    connections.close_all()
    entry = connections.configure_settings({"default": database_from_url(url)})["default"]
    connections.settings["default"] = django_settings.DATABASES["default"] = entry
    try:
        del connections["default"]  # the next use connects with the new entry
    except AttributeError:
        pass  # not connected yet in this thread


@pytest.fixture
def site(
    project: None, settings: Settings, database: peewee.Database, redis_conn: redis.Redis
) -> Iterator[Settings]:
    """The host's tables migrated into the test database; settings.SENSORMETER aimed at the
    test Redis, queue, ledger and emulator. Yields those sensormeter settings."""
    from django.core.management import call_command
    from django.db import connections
    from django.test import override_settings

    point_django_at(settings.database_url)
    call_command("migrate", "fleet", verbosity=0)
    host_settings = replace(settings, stripe_webhook_secret=WEBHOOK_SECRET)
    with override_settings(SENSORMETER=host_settings):
        yield host_settings
    call_command("migrate", "fleet", "zero", verbosity=0)
    connections.close_all()


@pytest.fixture
def made(site: Settings, redis_conn: redis.Redis) -> dict[str, Any]:
    """Companies in every billing situation, by name; the reports their seeding queued are
    dropped, so each test starts with an empty queue."""
    from fleet.models import Company, Device, Plan

    now = datetime.now(UTC)
    made = {}
    for name, state, customer in [
        ("acme", "active", "cus_acme"),
        ("globex", "trialing", "cus_globex"),
        ("umbrella", "past_due", "cus_umbrella"),
        ("hooli", "active", ""),
    ]:
        company = Company.objects.create(name=name, stripe_customer=customer)
        Plan.objects.create(company=company, state=state, period_end=now + timedelta(days=20))
        made[name] = company
    acme = made["acme"]
    for serial in ("a1", "a2", "a3"):
        Device.objects.create(company=acme, serial=serial, installed_at=now - timedelta(days=9))
    Device.objects.create(company=acme, serial="off", enabled=False)
    Device.objects.create(
        company=acme,
        serial="old",
        retired_at=now - timedelta(days=1),
        installed_at=now - timedelta(days=9),
    )
    Device.objects.create(company=made["umbrella"], serial="u1")
    Device.objects.create(company=made["hooli"], serial="h1")
    redis_conn.flushdb()
    return made


def ids(made: dict[str, Any], *names: str) -> list[str]:
    """The organization ids sensormeter knows the companies by."""
    return [str(made[name].pk) for name in names]


class TestUsageSource:
    """The source sensormeter loads from SENSORMETER_USAGE_SOURCE answers from the host's models."""

    @pytest.fixture
    def source(self, site: Settings, database: peewee.Database) -> UsageSource:
        """Loaded the way a worker loads it."""
        return load_usage_source(replace(site, usage_source=SOURCE), database)

    def test_billable_companies_are_paged_in_ascending_order(
        self, made: dict[str, Any], source: UsageSource
    ) -> None:
        """Active and trialing companies with a customer; pages agree with ``after``."""
        acme, globex = ids(made, "acme", "globex")
        assert source.billable_organization_ids(None, 10) == [acme, globex]
        assert source.billable_organization_ids(None, 1) == [acme]
        assert source.billable_organization_ids(acme, 1) == [globex]
        assert source.billable_organization_ids(globex, 1) == []

    def test_customers_only_for_billable_companies(
        self, made: dict[str, Any], source: UsageSource
    ) -> None:
        """past_due, no customer, unknown and non-numeric ids get no customer."""
        asked = [*ids(made, "acme", "globex", "umbrella", "hooli"), "999999", "acme"]
        assert source.billable_customers(asked) == dict(
            zip(ids(made, "acme", "globex"), ["cus_acme", "cus_globex"], strict=True)
        )

    def test_counts_enabled_unretired_devices(
        self, made: dict[str, Any], source: UsageSource
    ) -> None:
        """acme: 3 of its 5 devices (one disabled, one retired); none is 0."""
        acme, globex, umbrella = ids(made, "acme", "globex", "umbrella")
        assert source.count_active_sensors([acme, globex, umbrella]) == {
            acme: 3,
            globex: 0,
            umbrella: 1,
        }

    def test_counts_at_a_past_moment(self, made: dict[str, Any], source: UsageSource) -> None:
        """Two days ago the retired device still counted; later installs did not yet."""
        [acme] = ids(made, "acme")
        two_days_ago = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=2)
        counted_at = source.count_active_sensors_at  # type: ignore[attr-defined]
        assert counted_at([acme], two_days_ago) == {acme: 4}
        assert counted_at([acme], two_days_ago - timedelta(days=30)) == {acme: 0}

    def test_explains_why_not_billable(self, made: dict[str, Any], source: UsageSource) -> None:
        """The reason names the plan state, or the missing customer, or the unknown id."""
        umbrella, hooli = ids(made, "umbrella", "hooli")
        assert "past_due" in source.explain_not_billable(umbrella)
        assert "no Stripe customer" in source.explain_not_billable(hooli)
        assert source.explain_not_billable("999999") == "no such company"

    def test_periods_ending_in_the_window(self, made: dict[str, Any], source: UsageSource) -> None:
        """Only billable companies' period ends inside (after, until], as naive UTC."""
        from fleet.models import Plan

        end = datetime(2026, 11, 30, 0, 0)
        Plan.objects.filter(company__in=[made["acme"], made["umbrella"]]).update(
            period_end=end.replace(tzinfo=UTC)
        )
        ending = source.periods_ending  # type: ignore[attr-defined]
        assert ending(end - timedelta(minutes=10), end) == {ids(made, "acme")[0]: [end]}
        assert ending(end, end + timedelta(minutes=10)) == {}


class TestDeviceHook:
    """A saved or deleted Device queues its company's report, once committed."""

    def test_adding_a_device_queues_the_company_report(
        self, made: dict[str, Any], site: Settings, redis_conn: redis.Redis
    ) -> None:
        """POST .../devices: 201, and one report job for that company on the queue."""
        from django.test import Client

        [acme] = ids(made, "acme")
        answer = Client().post(f"/companies/{acme}/devices", {"serial": "a4"})
        assert answer.status_code == 201
        [(job_id, function, orgs)] = queued_reports(site, redis_conn)
        assert (function, orgs) == (REPORT_JOB, [acme])
        assert job_id.startswith("report-")

    def test_nothing_is_queued_before_commit_or_after_rollback(
        self, made: dict[str, Any], site: Settings, redis_conn: redis.Redis
    ) -> None:
        """Inside a transaction nothing is queued; a rolled-back change queues nothing."""
        from django.db import transaction
        from fleet.models import Device

        [acme] = ids(made, "acme")
        with transaction.atomic():
            Device.objects.create(company=made["acme"], serial="a4")
            assert queued_reports(site, redis_conn) == []
        assert [orgs for _, _, orgs in queued_reports(site, redis_conn)] == [[acme]]
        redis_conn.flushdb()

        with pytest.raises(RuntimeError), transaction.atomic():
            Device.objects.create(company=made["acme"], serial="a5")
            raise RuntimeError("the request failed after the save")
        assert queued_reports(site, redis_conn) == []

    def test_retiring_and_deleting_queue_reports_too(
        self, made: dict[str, Any], site: Settings, redis_conn: redis.Redis
    ) -> None:
        """The retire view (post_save) and a delete (post_delete) each ask for a report;
        while the first waits, the second coalesces into it."""
        from django.test import Client
        from fleet.models import Device

        [acme] = ids(made, "acme")
        device = Device.objects.filter(company=made["acme"], serial="a1").get()
        assert Client().post(f"/devices/{device.pk}/retire").status_code == 200
        Device.objects.filter(serial="a2").get().delete()
        assert [orgs for _, _, orgs in queued_reports(site, redis_conn)] == [[acme]]

    def test_redis_down_keeps_the_change(
        self, made: dict[str, Any], site: Settings, redis_conn: redis.Redis
    ) -> None:
        """A Redis that does not answer costs the report, not the user's request."""
        from django.test import Client, override_settings
        from fleet.models import Device

        down = replace(site, redis_url="redis://127.0.0.1:1/0")
        with override_settings(SENSORMETER=down):
            answer = Client().post(f"/companies/{made['acme'].pk}/devices", {"serial": "a4"})
        assert answer.status_code == 201
        assert Device.objects.filter(serial="a4").exists()
        assert queued_reports(site, redis_conn) == []


class TestWebhookView:
    """POST /stripe/meter-errors hands the raw body and signature to handle_stripe_webhook."""

    def test_signed_error_report_marks_the_row_rejected(
        self, site: Settings, emulator: StripeEmulator
    ) -> None:
        """A correctly signed delivery: 200, and the named ledger row becomes rejected."""
        from django.test import Client

        identifier = hourly_identifier("7", site.meter_event_name, HOUR)
        ledger_row("7", identifier)
        body = error_report(emulator, identifier)
        answer = Client().post(
            "/stripe/meter-errors",
            body,
            content_type="application/json",
            headers={"Stripe-Signature": signature(body)},
        )
        assert (answer.status_code, answer.json()) == (200, {"handled": True, "rows_marked": 1})
        row = MeterReport.get(MeterReport.identifier == identifier)
        assert row.status == "rejected" and REJECTION in row.last_error

    def test_bad_signature_is_refused(self, site: Settings, emulator: StripeEmulator) -> None:
        """A body signed with another secret: 400, and the row stays sent."""
        from django.test import Client

        identifier = hourly_identifier("7", site.meter_event_name, HOUR)
        ledger_row("7", identifier)
        body = error_report(emulator, identifier)
        answer = Client().post(
            "/stripe/meter-errors",
            body,
            content_type="application/json",
            headers={"Stripe-Signature": signature(body, secret="whsec_someone_else")},
        )
        assert answer.status_code == 400
        assert "signature" in answer.json()["error"]
        assert MeterReport.get(MeterReport.identifier == identifier).status == "sent"


class TestProcfileProcesses:
    """The Procfile's sensormeter processes, with the README's environment, read the host's
    models and bill the right counts."""

    def worker_env(self) -> dict[str, str]:
        """What the README sets for the worker and scheduler processes."""
        return {
            "SENSORMETER_USAGE_SOURCE": SOURCE,
            "DJANGO_SETTINGS_MODULE": "fleetsite.settings",
            "PYTHONPATH": ".",
        }

    def test_device_change_is_reported_with_the_host_count(
        self,
        made: dict[str, Any],
        site: Settings,
        redis_conn: redis.Redis,
        emulator: StripeEmulator,
    ) -> None:
        """The queued report ends in a sent ledger row with acme's 4 devices; a change for
        a non-billable company queues a job that records and sends nothing."""
        from django.test import Client

        acme, umbrella = ids(made, "acme", "umbrella")
        assert Client().post(f"/companies/{acme}/devices", {"serial": "a4"}).status_code == 201
        assert Client().post(f"/companies/{umbrella}/devices", {"serial": "u2"}).status_code == 201
        assert len(queued_reports(site, redis_conn)) == 2

        run_worker(site, cwd=PROJECT, **self.worker_env())

        assert ledger() == {acme: ("sent", 4, "cus_acme")}
        assert [(e.customer, e.value) for e in emulator.events()] == [("cus_acme", 4)]

    def test_hourly_report_bills_exactly_the_billable_companies(
        self,
        made: dict[str, Any],
        site: Settings,
        redis_conn: redis.Redis,
        emulator: StripeEmulator,
    ) -> None:
        """The Procfile's worker and scheduler lines, run together on a queued fan-out:
        acme (3) and globex (0) are billed; past_due and customer-less companies get nothing."""
        acme, globex = ids(made, "acme", "globex")
        processes = procfile(PROJECT / "Procfile")
        assert processes["worker"] == "sensormeter worker -n 5"
        enqueue_fanout(site, redis_conn)

        run_procfile(
            site,
            {name: processes[name] for name in ("scheduler", "worker")},
            cwd=PROJECT,
            **self.worker_env(),
        )

        assert ledger() == {acme: ("sent", 3, "cus_acme"), globex: ("sent", 0, "cus_globex")}
        assert sorted((e.customer, e.value) for e in emulator.events()) == [
            ("cus_acme", 3),
            ("cus_globex", 0),
        ]

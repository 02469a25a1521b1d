"""Unbilled usage: ``sensormeter unbilled``, the usage sources' answer and the metrics."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import peewee
import pytest
import redis

from sensormeter.hours import hour_start
from sensormeter.models import BillableInterval, Organization, Sensor, utcnow
from sensormeter.runtime import Runtime
from sensormeter.settings import Settings
from sensormeter.tasks.unbilled import survey_unbilled
from sensormeter.usage import DatabaseUsageSource, InMemoryUsageSource
from sensormeter.usage.source import NO_CUSTOMER, NO_SUBSCRIPTION, UnbilledUsage

from .conftest import cli_env, count_queries
from .factories import make_org
from .test_cli import one_error_line, sensormeter
from .test_metrics import samples, scrape

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

# organization -> (reason it is not billed, active sensors); each made by ``fleet`` below.
UNBILLED = {
    "late": ("past_due", 5),
    "late2": ("past_due", 7),
    "gone": ("canceled", 4),
    "nocus": (NO_CUSTOMER, 2),
    "blank": (NO_CUSTOMER, 1),
    "nosub": (NO_SUBSCRIPTION, 6),
}


def fleet() -> datetime:
    """Billable, unbilled and idle organizations; ``late`` was billable until 3 hours ago."""
    make_org("paying", active=3, inactive=2)
    make_org("trial", status="trialing", active=8)
    make_org("late", status="past_due", active=5, deleted=2)
    make_org("late2", status="past_due", active=7, inactive=1)
    make_org("gone", status="canceled", active=4)
    make_org("nocus", customer=None, active=2)
    make_org("blank", customer="  \t", active=1)
    Organization.create(id="nosub")
    Sensor.insert_many(
        [("nosub", True)] * 6, fields=[Sensor.organization, Sensor.is_active]
    ).execute()
    # Not billable, but nothing to bill: no active sensor (off, deleted) or none at all.
    make_org("idle", status="canceled", inactive=3, deleted=1)
    make_org("empty", status="past_due")
    # A sensor created in the future is not active yet (as the hourly count sees it).
    Sensor.create(organization="empty", created_at=utcnow() + timedelta(days=1))
    last = hour_start(utcnow()) - timedelta(hours=3)
    BillableInterval.create(
        organization_id="late",
        stripe_customer_id="cus_late",
        first_hour=last - timedelta(days=2),
        last_hour=last - timedelta(days=1),
    )
    BillableInterval.create(
        organization_id="late",
        stripe_customer_id="cus_late",
        first_hour=last - timedelta(hours=5),
        last_hour=last,
    )
    return last


def by_reason() -> dict[str, tuple[int, int]]:
    """(organizations, sensors) by reason, added up from UNBILLED."""
    totals: dict[str, tuple[int, int]] = {}
    for reason, n in UNBILLED.values():
        orgs, sensors = totals.get(reason, (0, 0))
        totals[reason] = (orgs + 1, sensors + n)
    return totals


class TestDefaultTables:
    def test_one_query_finds_each_unbilled_organization_and_why(
        self, database: peewee.Database, settings: Settings
    ) -> None:
        """Past due, canceled, no customer (none or blank), no subscription; idle ones left out."""
        fleet()
        source = DatabaseUsageSource(database, settings.billable_status_values)
        with count_queries() as queries:
            found = source.unbilled_usage()
        assert len(queries.statements) == 1
        assert found == [
            UnbilledUsage(org, reason, n) for org, (reason, n) in sorted(UNBILLED.items())
        ]


class TestCommand:
    def test_json_lists_every_organization_with_counts_and_since_when(
        self, settings: Settings, database: peewee.Database
    ) -> None:
        """Each reason's organizations and sensors; since = the end of the last interval."""
        last = fleet()
        done = sensormeter(cli_env(settings), "unbilled", "--json")
        assert done.returncode == 0, done.stderr
        facts = json.loads(done.stdout)
        assert facts["organizations"] == len(UNBILLED)
        assert facts["sensors"] == sum(n for _, n in UNBILLED.values())
        assert {
            reason: (group["organizations"], group["sensors"])
            for reason, group in facts["by_reason"].items()
        } == by_reason()
        listed = {o["organization_id"]: o for o in facts["unbilled"]}
        assert {org: (o["reason"], o["sensors"]) for org, o in listed.items()} == UNBILLED
        assert listed["late"]["last_billable_hour"] == f"{last:%Y-%m-%dT%H}:00:00+00:00"
        assert listed["late"]["since"] == f"{last + timedelta(hours=1):%Y-%m-%dT%H}:00:00+00:00"
        assert all(listed[o]["since"] is None for o in UNBILLED if o != "late")

    def test_text_groups_by_reason_biggest_first(
        self, settings: Settings, database: peewee.Database
    ) -> None:
        """One heading per reason with its totals, then its organizations, biggest first."""
        last = fleet()
        done = sensormeter(cli_env(settings), "unbilled")
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        total = sum(n for _, n in UNBILLED.values())
        assert (
            lines[0]
            == f"{len(UNBILLED)} organization(s) with {total} active sensor(s) are not billed:"
        )
        headings = [line for line in lines if line and not line.startswith(" ")][1:]
        assert headings == [
            "subscription past_due: 2 organization(s), 12 sensor(s)",
            "no subscription: 1 organization(s), 6 sensor(s)",
            "subscription canceled: 1 organization(s), 4 sensor(s)",
            "no Stripe customer id: 2 organization(s), 3 sensor(s)",
        ]
        rows = [line.split() for line in lines if line.startswith("  ")]
        assert [r[0] for r in rows] == ["late2", "late", "nosub", "gone", "nocus", "blank"]
        since = last + timedelta(hours=1)
        listed = {r[0]: " ".join(r[1:]) for r in rows}
        assert listed["late"] == f"5 sensors not billed since {since:%Y-%m-%d %H}:00 UTC"
        assert listed["late2"] == "7 sensors never billed"

    @sqlite_only
    def test_a_source_without_the_method_says_so(
        self, settings: Settings, database: peewee.Database
    ) -> None:
        """A host source with only the four required methods: one error line, exit 1."""
        env = cli_env(settings, SENSORMETER_USAGE_SOURCE="tests.host_source:minimal_source")
        done = sensormeter(env, "unbilled")
        line = one_error_line(done)
        assert done.returncode == 1
        assert "MinimalSource does not report unbilled usage" in line
        assert "unbilled_usage()" in line

    @sqlite_only
    def test_everyone_billed_is_one_line(
        self, settings: Settings, database: peewee.Database
    ) -> None:
        """Nothing unbilled: one line saying so, exit 0."""
        make_org("paying", active=3)
        done = sensormeter(cli_env(settings), "unbilled")
        assert (done.returncode, done.stdout) == (
            0,
            "every organization with active sensors is billed\n",
        )


class TestMetrics:
    def test_the_hourly_survey_gives_the_totals_by_reason(self, runtime: Runtime) -> None:
        """After the survey job, a scrape has sensors and organizations by reason."""
        fleet()
        got = samples(scrape(runtime.settings))
        assert not any(name.startswith("sensormeter_unbilled") for name, _ in got)
        before = utcnow()
        summary = survey_unbilled()
        assert summary == {"supported": True, "organizations": 6, "sensors": 25}
        got = samples(scrape(runtime.settings))
        for reason, (orgs, sensors) in by_reason().items():
            assert got[("sensormeter_unbilled_sensors", (("reason", reason),))] == sensors
            assert got[("sensormeter_unbilled_organizations", (("reason", reason),))] == orgs
        when = got[("sensormeter_unbilled_last_survey_timestamp_seconds", ())]
        assert when >= (before - datetime(1970, 1, 1)).total_seconds() - 1

    def test_a_scrape_reads_the_survey_not_the_host_tables(
        self, runtime: Runtime, redis_conn: redis.Redis
    ) -> None:
        """The metrics come from Redis: no scrape statement reads sensors or subscriptions."""
        fleet()
        survey_unbilled()
        with count_queries() as queries:
            scrape(runtime.settings)
        assert not any('"subscriptions"' in s or '"sensors"' in s for s in queries.statements)


class TestTwin:
    def test_in_memory_source_answers_like_the_tables(self) -> None:
        """A status not billable, no customer, not in the customers map; zero counts left out."""
        source = InMemoryUsageSource(
            {"a": "cus_a", "b": "cus_b", "c": " "},
            {"a": 3, "b": 4, "c": 2, "d": 5, "e": 0},
            statuses={"b": "past_due"},
        )
        assert source.unbilled_usage() == [
            UnbilledUsage("b", "past_due", 4),
            UnbilledUsage("c", NO_CUSTOMER, 2),
            UnbilledUsage("d", NO_SUBSCRIPTION, 5),
        ]
        assert source.billable_organization_ids(None, 10) == ["a"]
        assert source.explain_not_billable("b") == "subscription status not billable: past_due"


class TestCheck:
    @sqlite_only
    def test_check_notes_unbilled_usage_without_failing_for_it(
        self, runtime: Runtime, redis_conn: redis.Redis
    ) -> None:
        """After a survey: one notice line with the totals by reason; none before."""
        fleet()
        before = sensormeter(cli_env(runtime.settings), "check")
        assert "unbilled_usage" not in before.stdout
        survey_unbilled()
        done = sensormeter(cli_env(runtime.settings), "check")
        assert done.returncode == before.returncode, done.stdout
        [line] = [x for x in done.stdout.splitlines() if "unbilled_usage" in x]
        assert line == (
            "sensormeter.check.notice unbilled_usage: 25 active sensor(s) of 6 organization(s) "
            "are not billed (past_due 12, no_subscription 6, canceled 4, no_customer 3; "
            "see 'sensormeter unbilled')"
        )

"""Which organizations are billable, and how active sensors are counted (SQLite and PostgreSQL)."""

from __future__ import annotations

import peewee
import pytest

from sensormeter.errors import ConfigurationError
from sensormeter.models import Subscription
from sensormeter.settings import SUBSCRIPTION_STATUSES, Settings
from sensormeter.usage import (
    DatabaseUsageSource,
    InMemoryUsageSource,
    iter_billable_chunks,
    load_usage_source,
)

from .conftest import count_queries
from .factories import make_org

DEFAULT_BILLABLE = {"active", "trialing", "trial"}


def source(statuses: str = "active,trialing") -> DatabaseUsageSource:
    settings = Settings(billable_statuses=frozenset(statuses.split(",")))
    return DatabaseUsageSource(peewee.Proxy(), settings.billable_status_values)


class TestBillable:
    @pytest.mark.parametrize("status", sorted(SUBSCRIPTION_STATUSES | {"trial"}))
    def test_every_status_against_default_set(self, database: peewee.Database, status: str) -> None:
        """Only active, trialing and the seed's 'trial' are billable by default."""
        make_org("o1", status=status)
        billable = source().billable_customers(["o1"])
        assert ("o1" in billable) == (status in DEFAULT_BILLABLE)
        assert (source().billable_organization_ids(None, 10) == ["o1"]) == (
            status in DEFAULT_BILLABLE
        )

    def test_configured_set_is_used(self, database: peewee.Database) -> None:
        """SENSORMETER_BILLABLE_STATUSES=past_due makes past_due billable and active not."""
        make_org("due", status="past_due")
        make_org("act", status="active")
        assert source("past_due").billable_organization_ids(None, 10) == ["due"]

    @pytest.mark.parametrize("customer", [None, ""])
    def test_customerless_is_not_billable(
        self, database: peewee.Database, customer: str | None
    ) -> None:
        """An active subscription without a Stripe customer is not billable, and says why."""
        make_org("nocus", status="active", customer=customer)
        src = source()
        assert src.billable_customers(["nocus"]) == {}
        assert src.billable_organization_ids(None, 10) == []
        assert "no Stripe customer" in src.explain_not_billable("nocus")

    def test_explanations(self, database: peewee.Database) -> None:
        """Unknown and non-billable organizations are told apart in the log reason."""
        make_org("gone", status="canceled")
        src = source()
        assert src.explain_not_billable("nobody") == "unknown organization"
        assert "canceled" in src.explain_not_billable("gone")

    def test_newest_billable_subscription_gives_the_customer(
        self, database: peewee.Database
    ) -> None:
        """With two billable subscriptions, the later one's customer is used, once."""
        make_org("two", customer="cus_old")
        Subscription.create(organization="two", status="trialing", stripe_customer_id="cus_new")
        src = source()
        assert src.billable_customers(["two"]) == {"two": "cus_new"}
        assert src.billable_organization_ids(None, 10) == ["two"]


class TestCounting:
    def test_active_sensor_rules(self, database: peewee.Database) -> None:
        """A sensor counts only while is_active is true and deleted_at is null."""
        make_org("a", active=4, inactive=2, deleted=3)
        make_org("b")
        assert source().count_active_sensors(["a", "b", "unknown"]) == {
            "a": 4,
            "b": 0,
            "unknown": 0,
        }

    def test_one_query_whatever_the_chunk_size(self, database: peewee.Database) -> None:
        """Counting 3 or 60 organizations is the same single aggregate query."""
        for i in range(60):
            make_org(f"org{i:03d}", active=i % 5)
        ids = [f"org{i:03d}" for i in range(60)]
        src = source()
        with count_queries() as small:
            src.count_active_sensors(ids[:3])
            src.billable_customers(ids[:3])
        with count_queries() as large:
            counts = src.count_active_sensors(ids)
            src.billable_customers(ids)
        assert small.selects == large.selects == 2
        assert sum(counts.values()) == sum(i % 5 for i in range(60))


class TestChunks:
    def test_keyset_chunks_cover_every_billable_org_once(self, database: peewee.Database) -> None:
        """Chunks of 4 over 10 billable organizations (and 3 others) yield 4+4+2, in id order."""
        for i in range(10):
            make_org(f"b{i:02d}")
        for i in range(3):
            make_org(f"x{i}", status="canceled")
        chunks = list(iter_billable_chunks(source(), 4))
        assert [len(c) for c in chunks] == [4, 4, 2]
        assert [o for c in chunks for o in c] == [f"b{i:02d}" for i in range(10)]

    def test_exact_multiple_ends_cleanly(self) -> None:
        """When the last chunk is full, one more (empty) page ends the stream."""
        src = InMemoryUsageSource({f"o{i}": f"cus_{i}" for i in range(6)})
        assert [len(c) for c in iter_billable_chunks(src, 3)] == [3, 3]
        assert src.queries == 3


class TestHostSource:
    def test_factory_named_in_settings_is_used(self) -> None:
        """SENSORMETER_USAGE_SOURCE=module:factory replaces the default tables."""
        settings = Settings.from_env({"SENSORMETER_USAGE_SOURCE": "tests.host_source:make_source"})
        src = load_usage_source(settings, peewee.Proxy())
        assert src.billable_customers(["h1", "x"]) == {"h1": "cus_h1"}
        assert src.count_active_sensors(["h1"]) == {"h1": 9}

    @pytest.mark.parametrize(
        "path", ["tests.host_source:missing", "no_such_module:f", "tests.host_source:not_a_source"]
    )
    def test_bad_factory_is_a_configuration_error(self, path: str) -> None:
        """A factory that cannot be loaded, or returns no UsageSource, names the variable."""
        settings = Settings.from_env({"SENSORMETER_USAGE_SOURCE": path})
        with pytest.raises(ConfigurationError, match="SENSORMETER_USAGE_SOURCE"):
            load_usage_source(settings, peewee.Proxy())


class TestHostInserts:
    def test_rows_with_only_the_documented_columns(self, database: peewee.Database) -> None:
        """A host inserting with plain SQL and only the documented columns gets the defaults."""
        database.execute_sql("INSERT INTO organizations (id) VALUES ('plain')")
        database.execute_sql(
            "INSERT INTO subscriptions (organization_id, stripe_customer_id, status) "
            "VALUES ('plain', 'cus_plain', 'active')"
        )
        for _ in range(3):
            database.execute_sql("INSERT INTO sensors (organization_id) VALUES ('plain')")
        database.execute_sql(
            "INSERT INTO sensors (organization_id, deleted_at) VALUES ('plain', '2026-01-01')"
        )
        assert source().count_active_sensors(["plain"]) == {"plain": 3}
        from sensormeter.models import Sensor, utcnow

        created = [s.created_at for s in Sensor.select()]
        assert all(abs((utcnow() - c).total_seconds()) < 120 for c in created)  # stored as UTC

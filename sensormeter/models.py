"""The tables (the default host tables and the ledger), opening them, creating them."""

from __future__ import annotations

import os

import peewee

from .db import BaseModel, make_database, tuples, utcnow
from .errors import ServiceUnavailable
from .migrations import SchemaVersion, check_tables_fit, migrate
from .migrations.tables import BillableInterval, Quarantine
from .settings import redact_url


class Organization(BaseModel):
    """A customer organization of the host application."""

    id = peewee.TextField(primary_key=True)
    # Defaults in the table too, not only in Python: hosts insert rows with plain SQL.
    name = peewee.TextField(default="", constraints=[peewee.SQL("DEFAULT ''")])

    class Meta:
        table_name = "organizations"


class Subscription(BaseModel):
    """An organization's Stripe subscription, as the host application mirrors it."""

    id = peewee.AutoField()
    organization = peewee.ForeignKeyField(
        Organization, column_name="organization_id", backref="subscriptions", on_delete="CASCADE"
    )
    stripe_customer_id = peewee.TextField(null=True)
    stripe_subscription_id = peewee.TextField(null=True)
    status = peewee.TextField(
        default="incomplete", constraints=[peewee.SQL("DEFAULT 'incomplete'")]
    )
    current_period_start = peewee.DateTimeField(null=True)
    current_period_end = peewee.DateTimeField(null=True)

    class Meta:
        table_name = "subscriptions"
        indexes = (
            (("status", "organization"), False),
            # The period-close check looks for periods ending in the next minutes, and for
            # renewed ones whose start is the end it looks for.
            (("current_period_end",), False),
            # Each report job looks up the organizations of its chunk's customers.
            (("stripe_customer_id",), False),
            (("current_period_start",), False),
        )


class Sensor(BaseModel):
    """One sensor; it is active while ``is_active`` is true and ``deleted_at`` is null."""

    id = peewee.AutoField()
    organization = peewee.ForeignKeyField(
        Organization, column_name="organization_id", backref="sensors", on_delete="CASCADE"
    )
    is_active = peewee.BooleanField(default=True, constraints=[peewee.SQL("DEFAULT TRUE")])
    # CURRENT_TIMESTAMP is UTC in SQLite; create_tables makes PostgreSQL's UTC too.
    created_at = peewee.DateTimeField(
        default=utcnow, constraints=[peewee.SQL("DEFAULT CURRENT_TIMESTAMP")]
    )
    deleted_at = peewee.DateTimeField(null=True)

    class Meta:
        table_name = "sensors"


class MeterReport(BaseModel):
    """The ledger: one row per report sent (or to be sent) to Stripe, the billing audit trail."""

    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"
    REJECTED = "rejected"
    # Kept back before sending, never sent (yet): by the anomaly guard (a release or a recount
    # sends it), because Stripe refuses the customer or the meter itself (a quarantine
    # release sends it), or for good because a newer report of the customer was delivered.
    HELD = "held"
    QUARANTINED = "quarantined"
    SUPERSEDED = "superseded"
    STATUSES = (PENDING, SENT, FAILED, REJECTED, HELD, QUARANTINED, SUPERSEDED)

    id = peewee.AutoField()
    HOURLY = "hourly"
    ON_DEMAND = "on_demand"
    PERIOD_CLOSE = "period_close"

    # Plain text, not a foreign key: hosts with their own schema may have no organizations table.
    organization_id = peewee.TextField(index=True)
    event_name = peewee.TextField()
    value = peewee.BigIntegerField()
    identifier = peewee.TextField(unique=True)
    kind = peewee.TextField(default=HOURLY)
    period_hour = peewee.DateTimeField(null=True)
    stripe_customer_id = peewee.TextField()
    measured_at = peewee.DateTimeField()
    status = peewee.TextField(default=PENDING, index=True)
    attempts = peewee.IntegerField(default=0)
    last_error = peewee.TextField(null=True)
    stripe_request_id = peewee.TextField(null=True)
    job_id = peewee.TextField(null=True)
    # Organizations that share a Stripe customer are billed by one event per customer: each
    # keeps its own row (its part in ``value``), and these name the event they went out in
    # and its value (the sum of the parts). NULL for an organization alone on its customer,
    # whose event is its own row. Added by migration 1 (sensormeter/migrations/steps.py).
    event_identifier = peewee.TextField(null=True, index=True)
    event_value = peewee.BigIntegerField(null=True)
    # Why a row was kept back (held, quarantined, superseded), as JSON: the rule or Stripe's
    # code, the readings it was judged on, the first reading of a held row that a recount
    # replaced. NULL for a row that went out as it was counted. Added by migration 3.
    evidence = peewee.TextField(null=True)
    created_at = peewee.DateTimeField(default=utcnow)
    updated_at = peewee.DateTimeField(default=utcnow)
    sent_at = peewee.DateTimeField(null=True)

    class Meta:
        table_name = "meter_reports"
        indexes = (
            # Catch-up reads each organization's hourly rows by hour.
            (("organization_id", "period_hour"), False),
            # Reconcile reads the rows of a window of event timestamps.
            (("measured_at",), False),
        )


MODELS: list[type[BaseModel]] = [
    SchemaVersion,
    Organization,
    Subscription,
    Sensor,
    MeterReport,
    BillableInterval,
    Quarantine,
]
# sensormeter's own tables, created whatever the usage source; the default host tables only
# when sensormeter reads them (no SENSORMETER_USAGE_SOURCE).
OWN_MODELS: list[type[BaseModel]] = [SchemaVersion, MeterReport, BillableInterval, Quarantine]
HOST_MODELS: list[type[BaseModel]] = [Organization, Subscription, Sensor]


def managed_models(host_tables: bool) -> list[type[BaseModel]]:
    """The models whose tables sensormeter creates and migrates."""
    return MODELS if host_tables else OWN_MODELS


def open_database(url: str, *, create: bool = True, bind: bool = True) -> peewee.Database:
    """Build the database, bind the models to it and check that it answers.

    Args:
        url: ``DATABASE_URL``.
        create: whether a SQLite file that does not exist may be created. Only
            ``sensormeter init-db`` and ``demo`` create one; everything else passes False,
            so that a mistyped path is an error instead of a new, empty database.
        bind: whether to bind sensormeter's models to it. Readers that pass the database
            to every query (the metrics in a host's web process) leave the host's binding.

    Raises:
        ConfigurationError: the URL is malformed or its driver is missing.
        ServiceUnavailable: the database does not answer, or (``create=False``) the SQLite
            file does not exist.
    """
    database = make_database(url)
    if not create and isinstance(database, peewee.SqliteDatabase):
        path = str(database.database)
        if path != ":memory:" and not os.path.exists(path):
            raise ServiceUnavailable(
                "the database",
                redact_url(url),
                f"no SQLite database at {os.path.abspath(path)} (run 'sensormeter init-db' first)",
            )
    if bind:
        database.bind(MODELS)
    try:
        database.connect(reuse_if_open=True)
    except peewee.OperationalError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ServiceUnavailable("the database", redact_url(url), reason) from None
    return database


def create_tables(database: peewee.Database, *, host_tables: bool = True) -> list[str]:
    """Create the missing tables and migrate existing ones to the current shape (idempotent).

    Returns the names of the tables created. Existing tables are checked first: one that does
    not fit (a host's own ``organizations``, say) raises SchemaConflict before any DDL. Then,
    in one transaction, the migrations bring existing tables to the current shape (adding,
    never dropping a row) and the missing tables are created.

    Args:
        database: an open database.
        host_tables: whether to create the default host tables too (organizations,
            subscriptions, sensors); False when SENSORMETER_USAGE_SOURCE names the host's own.

    Raises:
        SchemaConflict: an existing table does not fit; nothing was changed.
    """
    models = managed_models(host_tables)
    check_tables_fit(database, models)
    existing = set(database.get_tables())
    missing = [m for m in models if m._meta.table_name not in existing]
    with database.atomic():
        migrate(database, host_tables=host_tables)
        # Only the missing tables: an existing table changes through migrations alone.
        database.create_tables(missing, safe=True)
        if isinstance(database, peewee.PostgresqlDatabase) and Sensor in missing:
            # CURRENT_TIMESTAMP would be converted to the session's time zone here.
            database.execute_sql(
                "ALTER TABLE sensors ALTER COLUMN created_at SET DEFAULT (now() AT TIME ZONE 'utc')"
            )
    return [m._meta.table_name for m in missing]


__all__ = [
    "HOST_MODELS",
    "MODELS",
    "OWN_MODELS",
    "BaseModel",
    "BillableInterval",
    "MeterReport",
    "Organization",
    "Quarantine",
    "SchemaVersion",
    "Sensor",
    "Subscription",
    "create_tables",
    "managed_models",
    "make_database",
    "open_database",
    "tuples",
    "utcnow",
]

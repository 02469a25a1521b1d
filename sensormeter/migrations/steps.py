"""The migrations themselves: each schema change since the first release, in order.

A migration is frozen once released: it names its tables, columns and indexes itself (never
through the current models), looks at what is there and returns only the operations still
needed, so it is safe on a table just created in the current shape, on one it already changed,
and on one where a DBA made an index by hand (under another name, or CONCURRENTLY).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import peewee
from playhouse.migrate import SchemaMigrator

from .tables import ADDED_TABLES

LEDGER_TABLE = "meter_reports"
SUBSCRIPTIONS_TABLE = "subscriptions"

# The columns that migrations add to an existing table: a table without them still fits the
# release that made it, and `migrate` brings it to the current shape.
ADDED_COLUMNS: frozenset[tuple[str, str]] = frozenset(
    {
        (LEDGER_TABLE, "event_identifier"),
        (LEDGER_TABLE, "event_value"),
        (LEDGER_TABLE, "evidence"),
    }
)


@dataclass(frozen=True)
class Target:
    """What the migrations may change: the ledger always, the default host tables only when
    sensormeter reads them (no SENSORMETER_USAGE_SOURCE)."""

    database: peewee.Database
    migrator: SchemaMigrator
    host_tables: bool
    tables: frozenset[str]

    def columns(self, table: str) -> set[str]:
        """The names of the table's columns."""
        return {column.name for column in self.database.get_columns(table)}

    def has_index(self, table: str, columns: Sequence[str]) -> bool:
        """Whether some index of the table covers exactly these columns, in this order."""
        return any(
            list(index.columns) == list(columns) for index in self.database.get_indexes(table)
        )

    def add_index(self, table: str, columns: Sequence[str], name: str) -> list[Any]:
        """The operation adding the index, or nothing when the table or the index is there."""
        if table not in self.tables or self.has_index(table, columns):
            return []
        return [self.migrator.add_index(table, tuple(columns), name=name)]


@dataclass(frozen=True)
class Migration:
    """One step of the schema, applied once per database and recorded by its version."""

    version: int
    description: str
    operations: Callable[[Target], list[Any]]


def _shared_customer_events(target: Target) -> list[Any]:
    """meter_reports gains event_identifier (indexed) and event_value (shared customers)."""
    if LEDGER_TABLE not in target.tables:
        return []  # created afterwards in the current shape
    columns = target.columns(LEDGER_TABLE)
    operations: list[Any] = []
    if "event_identifier" not in columns:
        # Nullable, no default: adding it rewrites no row, on SQLite and PostgreSQL alike.
        operations.append(
            target.migrator.add_column(
                LEDGER_TABLE, "event_identifier", peewee.TextField(null=True)
            )
        )
    if "event_value" not in columns:
        operations.append(
            target.migrator.add_column(
                LEDGER_TABLE, "event_value", peewee.BigIntegerField(null=True)
            )
        )
    # Named as peewee names the model's own index, so create_tables sees it as present.
    operations += target.add_index(
        LEDGER_TABLE, ["event_identifier"], "meterreport_event_identifier"
    )
    return operations


def _subscription_lookups(target: Target) -> list[Any]:
    """subscriptions gains indexes on stripe_customer_id and current_period_start."""
    if not target.host_tables:
        return []  # the host's own tables are the host's to index
    return target.add_index(
        SUBSCRIPTIONS_TABLE, ["stripe_customer_id"], "subscription_stripe_customer_id"
    ) + target.add_index(
        SUBSCRIPTIONS_TABLE, ["current_period_start"], "subscription_current_period_start"
    )


def _billing_truth(target: Target) -> list[Any]:
    """meter_reports gains evidence; the billable history and quarantine tables appear."""
    operations: list[Any] = []
    if LEDGER_TABLE in target.tables and "evidence" not in target.columns(LEDGER_TABLE):
        operations.append(
            target.migrator.add_column(LEDGER_TABLE, "evidence", peewee.TextField(null=True))
        )
    for model in ADDED_TABLES:
        if model._meta.table_name in target.tables:
            continue
        # Built, not run: the plan runs (or prints) every statement itself.
        manager = peewee.SchemaManager(model, target.database)
        operations.append(manager._create_table(safe=True))  # type: ignore[attr-defined]
        operations += [
            manager._create_index(index, safe=True)  # type: ignore[attr-defined]
            for index in model._meta.fields_to_index()
        ]
    return operations


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "meter_reports: event_identifier, event_value", _shared_customer_events),
    Migration(
        2,
        "subscriptions: indexes on stripe_customer_id, current_period_start",
        _subscription_lookups,
    ),
    Migration(
        3,
        "meter_reports: evidence; tables sensormeter_billable_history, sensormeter_quarantine",
        _billing_truth,
    ),
)
CURRENT_VERSION = MIGRATIONS[-1].version

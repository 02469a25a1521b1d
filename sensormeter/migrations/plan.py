"""Planning the migrations a database lacks as SQL, then running it or only printing it.

The plan is made by asking playhouse.migrate's operations for their SQL instead of running
them, so ``sensormeter migrate --sql`` prints exactly the statements that ``migrate`` runs,
and a dry run executes no DDL at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import peewee
from playhouse.migrate import Operation, SchemaMigrator

from ..db import utcnow
from .steps import MIGRATIONS, Migration, Target
from .version import SchemaVersion, applied_versions


@dataclass(frozen=True)
class Statement:
    """One SQL statement with its parameters, as the driver receives it."""

    sql: str
    params: tuple[Any, ...] = ()

    def text(self, placeholder: str) -> str:
        """The statement with its parameters written in, for a person to read or run."""
        pieces = self.sql.split(placeholder)
        if len(pieces) != len(self.params) + 1:
            return self.sql + ";"  # no parameters, or a placeholder inside a literal
        out = [pieces[0]]
        for value, rest in zip(self.params, pieces[1:], strict=True):
            out += [_literal(value), rest]
        return "".join(out) + ";"


def _literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, datetime):
        value = value.isoformat(sep=" ")
    return "'" + str(value).replace("'", "''") + "'"


@dataclass(frozen=True)
class Step:
    """A migration the database lacks, and the statements that apply and record it."""

    migration: Migration
    statements: tuple[Statement, ...]


@dataclass(frozen=True)
class Plan:
    """What ``migrate`` would do to one database: statements first, then each step's."""

    setup: tuple[Statement, ...]
    steps: tuple[Step, ...]
    from_version: int
    placeholder: str

    @property
    def statements(self) -> list[Statement]:
        """Every statement of the plan, in the order it runs."""
        return [*self.setup, *(s for step in self.steps for s in step.statements)]

    def sql(self) -> list[str]:
        """The plan as SQL text, one statement per item, parameters written in."""
        return [s.text(self.placeholder) for s in self.statements]


def _statements(database: peewee.Database, result: Any) -> list[Statement]:
    """The SQL of an operation's result, walked as playhouse.migrate's Operation.run walks it."""
    if isinstance(result, Operation):
        return _statements(database, result.fn(result.migrator, *result.args, **result.kwargs))
    if isinstance(result, list | tuple):
        return [s for item in result for s in _statements(database, item)]
    if isinstance(result, peewee.Context):
        sql, params = result.query()
    elif isinstance(result, peewee.Node):
        sql, params = database.get_sql_context().sql(result).query()
    else:
        raise TypeError(f"unexpected migration operation result {result!r}")
    return [Statement(sql, tuple(params))]


def plan_migrations(database: peewee.Database, *, host_tables: bool = True) -> Plan:
    """The statements that bring this database to the current schema; runs no DDL.

    Args:
        database: an open database.
        host_tables: whether the default host tables (organizations, subscriptions, sensors)
            are sensormeter's to change; False when SENSORMETER_USAGE_SOURCE is set.
    """
    tables = frozenset(database.get_tables())
    done = applied_versions(database)
    setup: list[Statement] = []
    with database.bind_ctx([SchemaVersion]):
        if SchemaVersion._meta.table_name not in tables:
            # create_table() would run it; _create_table() only builds it (peewee 3 and 4).
            manager = peewee.SchemaManager(SchemaVersion, database)
            ctx = manager._create_table(safe=True)  # type: ignore[attr-defined]
            setup.append(Statement(*ctx.query()))
        target = Target(database, SchemaMigrator.from_database(database), host_tables, tables)
        steps = []
        for migration in MIGRATIONS:
            if migration.version in done:
                continue
            # No RETURNING clause (peewee's default on PostgreSQL): nothing reads it back.
            record = (
                SchemaVersion.insert(
                    version=migration.version,
                    description=migration.description,
                    applied_at=utcnow(),
                )
                .returning()
                .sql()
            )
            statements = _statements(database, migration.operations(target))
            steps.append(Step(migration, (*statements, Statement(record[0], tuple(record[1])))))
    return Plan(tuple(setup), tuple(steps), max(done, default=0), database.param)


def apply_plan(database: peewee.Database, plan: Plan) -> list[Migration]:
    """Run the plan in one transaction (all of it or none of it); returns the migrations run."""
    with database.atomic():
        for statement in plan.statements:
            database.execute_sql(statement.sql, statement.params or None)
    return [step.migration for step in plan.steps]


def migrate(database: peewee.Database, *, host_tables: bool = True) -> list[Migration]:
    """Apply and record the migrations this database lacks; returns those applied."""
    return apply_plan(database, plan_migrations(database, host_tables=host_tables))

"""Helpers for the schema tests: an old release's tables from tests/fixtures/, a table's shape.

The fixtures are what ``sensormeter init-db`` made at each schema change since commit 1aac8fc,
dumped from SQLite and PostgreSQL by scripts/schema-fixtures.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import peewee

from sensormeter.models import open_database

FIXTURES = Path(__file__).parent / "fixtures"
# Every schema a release of sensormeter has made, oldest first (scripts/schema-fixtures).
OLD_SCHEMAS = ("1aac8fc", "2b8bf40", "f06d04e", "87a37d3")

Shape = dict[str, tuple[frozenset[tuple[str, str, bool]], frozenset[tuple[tuple[str, ...], bool]]]]


def is_postgres(database: peewee.Database) -> bool:
    """Whether the database is PostgreSQL."""
    return isinstance(database, peewee.PostgresqlDatabase)


def drop_everything(database_url: str) -> None:
    """Drop every table of the database, whoever made it."""
    db = open_database(database_url)
    for table in db.get_tables():
        db.execute_sql(f'DROP TABLE IF EXISTS "{table}"' + (" CASCADE" if is_postgres(db) else ""))
    db.close()


def run_sql_script(database_url: str, script: str) -> None:
    """Run a file of SQL statements on its own connection, as a DBA's client would."""
    db = open_database(database_url)
    if is_postgres(db):
        # One simple-protocol execute runs them all (no parameters); the connection is
        # closed after, since a pg_dump script changes the session's search_path.
        db.cursor().execute(script)
        db.close()
        return
    path = str(db.database)
    db.close()
    with sqlite3.connect(path) as connection:
        connection.executescript(script)
    connection.close()


def load_old_schema(database_url: str, commit: str) -> None:
    """Replace the database's tables with those ``init-db`` made at ``commit``."""
    drop_everything(database_url)
    kind = "postgresql" if database_url.startswith("postgres") else "sqlite"
    run_sql_script(database_url, (FIXTURES / f"schema_{commit}.{kind}.sql").read_text())


def shape(database: peewee.Database) -> Shape:
    """Each table's columns (name, type, nullable) and indexes (columns, unique)."""
    found: Shape = {}
    for table in database.get_tables():
        columns = frozenset(
            (c.name, c.data_type.lower(), bool(c.null)) for c in database.get_columns(table)
        )
        indexes = frozenset((tuple(i.columns), bool(i.unique)) for i in database.get_indexes(table))
        found[table] = (columns, indexes)
    return found


def insert(database: peewee.Database, table: str, **values: Any) -> None:
    """Insert one row with plain SQL, as an old release (or a host) would."""
    columns = ", ".join(values)
    marks = ", ".join([database.param] * len(values))
    database.execute_sql(
        f"INSERT INTO {table} ({columns}) VALUES ({marks})", tuple(values.values())
    )

"""Opening a database from a URL, and the helpers every table module shares."""

from __future__ import annotations

import importlib
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, unquote

import peewee

from .errors import ConfigurationError
from .settings import redact_url, split_url


def utcnow() -> datetime:
    """The current time as a naive UTC datetime, the form every column stores."""
    return datetime.now(UTC).replace(tzinfo=None)


class BaseModel(peewee.Model):
    """Models are unbound: :func:`open_database` binds them to one database per process."""


def tuples(query: Any) -> list[tuple[Any, ...]]:
    """Run a select and return its rows as plain tuples (typed loosely: peewee's stubs can't)."""
    return [tuple(row) for row in query.tuples()]


def one_of(field: Any, values: Any) -> Any:
    """``field IN (values)``; on PostgreSQL ``field = ANY(array)``, one parameter however many.

    peewee builds an IN list value by value and PostgreSQL parses each placeholder: for a
    chunk's 500 ids that cost more CPU than the lookup (see docs/performance.md).
    """
    values = list(values)
    if isinstance(field.model._meta.database, peewee.PostgresqlDatabase):
        # converter=False: the list goes to the driver as one array, not through the field.
        return field == peewee.fn.ANY(peewee.Value(values, converter=False, unpack=False))
    return field.in_(values)


# In order of preference: psycopg 3 is the maintained driver (and Django's since 4.2); psycopg2
# still works, so a deployment that has only it keeps running unchanged.
POSTGRES_DRIVERS = ("psycopg", "psycopg2")


def postgres_driver() -> str:
    """The PostgreSQL driver to use: ``psycopg`` (3) when installed, else ``psycopg2``.

    Raises:
        ConfigurationError: neither is installed.
    """
    for name in POSTGRES_DRIVERS:
        try:
            importlib.import_module(name)
        except ImportError:
            continue
        return name
    raise ConfigurationError(
        "DATABASE_URL",
        "PostgreSQL needs a driver, and neither psycopg (3) nor psycopg2 is installed: "
        "pip install 'sensormeter[postgres]' (or psycopg2-binary)",
    )


def make_database(url: str) -> peewee.Database:
    """Build (without connecting) a peewee database for ``sqlite:///...`` or ``postgresql://...``."""
    parts = split_url(url, "DATABASE_URL")
    options: dict[str, Any] = dict(parse_qsl(parts.query))
    if parts.scheme == "sqlite":
        path = unquote(parts.path[1:]) if parts.path.startswith("/") else unquote(parts.path)
        if parts.netloc:
            # sqlite://relative.db is a common slip for sqlite:///relative.db.
            path = parts.netloc + parts.path
        if not path:
            raise ConfigurationError("DATABASE_URL", "sqlite URL needs a path: sqlite:///file.db")
        # WAL plus a busy timeout lets five worker processes write one SQLite file safely.
        return peewee.SqliteDatabase(
            path,
            pragmas={"journal_mode": "wal", "busy_timeout": 30_000, "foreign_keys": 1},
            timeout=30,
        )
    if parts.scheme in ("postgres", "postgresql"):
        driver = postgres_driver()
        return peewee.PostgresqlDatabase(
            unquote(parts.path.lstrip("/")) or "postgres",
            user=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            host=parts.hostname,
            port=parts.port,
            prefer_psycopg3=driver == "psycopg",
            **options,
        )
    raise ConfigurationError("DATABASE_URL", f"unsupported scheme in {redact_url(url)!r}")

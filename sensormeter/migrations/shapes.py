"""Whether an existing table fits the model sensormeter would use it as, checked before any DDL.

A host application may already own a table called ``organizations`` (or ``subscriptions``,
``sensors``, even ``meter_reports``) of its own shape. sensormeter must then refuse with one
line rather than alter it, or half-create tables that point at it.
"""

from __future__ import annotations

from collections.abc import Iterable

import peewee

from ..errors import SchemaConflict
from .steps import ADDED_COLUMNS

# Declared types, by family: a column fits when its family is one the field accepts. SQLite
# stores booleans in INTEGER columns, and peewee declares them so there.
_ACCEPTS = {
    "text": {"text"},
    "integer": {"integer"},
    "boolean": {"boolean", "integer"},
    "datetime": {"datetime", "text"},
}


def _family(declared: str) -> str:
    """The family of a declared column type ("character varying" -> "text", ...)."""
    t = declared.lower()
    if "bool" in t:
        return "boolean"
    if "int" in t or "serial" in t or t == "auto":
        return "integer"
    if "char" in t or "text" in t or "clob" in t:
        return "text"
    if "time" in t or "date" in t:
        return "datetime"
    return t


def misfit(database: peewee.Database, model: type[peewee.Model]) -> str | None:
    """Why the model's existing table does not fit it, or None when it does."""
    table = model._meta.table_name
    found = {column.name: column for column in database.get_columns(table)}
    for field in model._meta.sorted_fields:
        name = field.column_name
        column = found.get(name)
        if column is None:
            if (table, name) in ADDED_COLUMNS:
                continue  # an earlier release's table: migrate adds it
            return f"it has no column {name}"
        want = _family(field.field_type)
        have = _family(column.data_type)
        if want in _ACCEPTS and have not in _ACCEPTS[want]:
            return f"its {name} is {column.data_type.lower()}, sensormeter's is {want}"
        if field.primary_key and not column.primary_key:
            return f"its {name} is not the primary key"
    return None


def check_tables_fit(database: peewee.Database, models: Iterable[type[peewee.Model]]) -> None:
    """Raise SchemaConflict for the first existing table that does not fit its model.

    Args:
        database: an open database.
        models: the models whose tables sensormeter would create or change.
    """
    existing = set(database.get_tables())
    for model in models:
        table = model._meta.table_name
        if table not in existing:
            continue
        problem = misfit(database, model)
        if problem is None:
            continue
        if table.startswith("sensormeter_") or table == "meter_reports":
            advice = f"rename that table: sensormeter's own table must be called {table}"
        else:
            advice = (
                "set SENSORMETER_USAGE_SOURCE to read your own tables (docs/integrating.md), "
                f"or rename your {table} table"
            )
        raise SchemaConflict(table, problem, advice)

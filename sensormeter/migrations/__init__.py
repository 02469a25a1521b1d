"""Versioned schema migrations: each release's databases reach the current shape in place.

``sensormeter migrate`` (and ``sensormeter init-db``, through ``models.create_tables``) applies
every migration not yet recorded in ``sensormeter_schema_version`` and records it, all in one
transaction; ``migrate --sql`` prints the same statements without running them. A migration
only adds (columns, indexes) and checks what is there first (steps.py). Existing tables are
checked to fit before any DDL (shapes.py). Processes refuse to start on a database that is
behind (:func:`check_schema`).
"""

from __future__ import annotations

from .plan import Plan, Statement, Step, apply_plan, migrate, plan_migrations
from .shapes import check_tables_fit, misfit
from .steps import ADDED_COLUMNS, CURRENT_VERSION, LEDGER_TABLE, MIGRATIONS, Migration
from .version import SchemaVersion, applied_versions, check_schema

__all__ = [
    "ADDED_COLUMNS",
    "CURRENT_VERSION",
    "LEDGER_TABLE",
    "MIGRATIONS",
    "Migration",
    "Plan",
    "SchemaVersion",
    "Statement",
    "Step",
    "applied_versions",
    "apply_plan",
    "check_schema",
    "check_tables_fit",
    "migrate",
    "misfit",
    "plan_migrations",
]

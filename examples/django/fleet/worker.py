"""The factory `sensormeter worker` and `scheduler` load: fleet.worker:make_source.

Those processes are sensormeter's, not Django's: nothing has set Django up when they import
this module, so the factory does (and the models are imported only after that).
"""

from __future__ import annotations

import os
from typing import Any

import django
from django.apps import apps

from sensormeter import Settings, UsageSource


def make_source(settings: Settings, database: Any) -> UsageSource:
    """Set Django up in this process and return the fleet UsageSource.

    ``database`` is sensormeter's peewee database (the ledger); the source reads through
    Django's own connection instead. RQ forks a work horse per job, and Django opens its
    connection on the first query, in the work horse, so no connection crosses a fork.
    """
    if not apps.ready:
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fleetsite.settings")
        django.setup()
    from .usage import FleetUsageSource

    return FleetUsageSource(settings.billable_status_values)

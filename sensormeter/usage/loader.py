"""Loading the configured usage source: the default tables, or the host's factory."""

from __future__ import annotations

import importlib
from collections.abc import Callable

import peewee

from ..errors import ConfigurationError, SensormeterError
from ..logs import scrub
from ..settings import Settings
from .database import DatabaseUsageSource
from .source import UsageSource

UsageSourceFactory = Callable[[Settings, peewee.Database], UsageSource]


def load_usage_source(settings: Settings, database: peewee.Database) -> UsageSource:
    """Build the configured source: the default tables, or the host's ``module:factory``."""
    if settings.usage_source is None:
        return DatabaseUsageSource(database, settings.billable_status_values)
    module_name, _, attribute = settings.usage_source.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(
            "SENSORMETER_USAGE_SOURCE", f"cannot load {settings.usage_source!r}: {exc}"
        ) from None
    if not callable(factory):
        raise ConfigurationError(
            "SENSORMETER_USAGE_SOURCE",
            f"{settings.usage_source!r} is a {type(factory).__name__}, not a factory to call",
        )
    try:
        source = factory(settings, database)
    except SensormeterError:
        raise  # already one clear line (e.g. ServiceUnavailable from the host's own check)
    except Exception as exc:  # noqa: BLE001 (any failure of the host's factory is named)
        # The factory is the host's code: whatever it raises (os:getcwd, builtins:dict give a
        # TypeError) must stop the process with one line naming the setting, and no secret.
        lines = str(exc).strip().splitlines()
        raise ConfigurationError(
            "SENSORMETER_USAGE_SOURCE",
            f"calling {settings.usage_source!r}(settings, database) failed: "
            f"{type(exc).__name__}: {scrub(lines[0]) if lines else '(no message)'}",
        ) from None
    if not isinstance(source, UsageSource):
        raise ConfigurationError(
            "SENSORMETER_USAGE_SOURCE",
            f"{settings.usage_source!r} returned {type(source).__name__}, which lacks the "
            "UsageSource methods",
        )
    return source

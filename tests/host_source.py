"""A host's own usage source, loaded by tests through SENSORMETER_USAGE_SOURCE."""

from __future__ import annotations

from typing import Any

from sensormeter.settings import Settings
from sensormeter.usage import InMemoryUsageSource


def make_source(settings: Settings, database: Any) -> InMemoryUsageSource:
    """Factory named as tests.host_source:make_source."""
    return InMemoryUsageSource({"h1": "cus_h1"}, {"h1": 9})


def not_a_source(settings: Settings, database: Any) -> object:
    """Returns something that lacks the UsageSource methods."""
    return object()

"""Where billable organizations and their active-sensor counts come from.

The default source reads sensormeter's own tables. A host with its own schema implements
:class:`UsageSource` (four methods) and names a factory in ``SENSORMETER_USAGE_SOURCE``.
"""

from __future__ import annotations

from .database import DatabaseUsageSource
from .loader import UsageSourceFactory, load_usage_source
from .memory import InMemoryUsageSource
from .source import BLANKS, UsageSource, iter_billable_chunks

__all__ = [
    "BLANKS",
    "DatabaseUsageSource",
    "InMemoryUsageSource",
    "UsageSource",
    "UsageSourceFactory",
    "iter_billable_chunks",
    "load_usage_source",
]

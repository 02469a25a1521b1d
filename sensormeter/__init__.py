"""sensormeter: report each organization's active-sensor count to a Stripe Billing Meter.

The public API, grouped by what a host does with it (README.md, "Public API"): queue
reports, run the RQ side, plug in its data, plug in Stripe, handle webhooks, watch it, catch
errors.
Everything else is internal: importable from its module, but not promised.
"""

from __future__ import annotations

import importlib
import warnings
from typing import TYPE_CHECKING, Any

from .errors import (
    ConfigurationError,
    InvalidOrganizationId,
    ReportsFailed,
    RetryableReportError,
    SensormeterError,
    ServiceUnavailable,
    WebhookError,
)
from .meters import InMemoryMeterClient, StripeMeterClient, StripeStreamClient
from .meters.base import MeterClient, MeterEvent
from .ops.metrics import make_metrics_app
from .settings import Settings
from .tasks.fanout import enqueue_fanout, report_all_sensor_counts
from .tasks.report import enqueue_sensor_report, process_meter_report
from .tasks.schedule import register_hourly_job
from .usage import DatabaseUsageSource, InMemoryUsageSource, UsageSource
from .webhook import WebhookResult, handle_stripe_webhook

if TYPE_CHECKING:  # typed for a host's type checker; at run time they come through __getattr__
    from .runtime import Runtime, get_runtime, make_redis, set_runtime
    from .tasks.queue import make_queue

# Internals that 0.1 exported from here: still importable from ``sensormeter`` in this
# release, with a DeprecationWarning naming the module they live in; gone in the next one.
DEPRECATED = {
    "Runtime": "sensormeter.runtime",
    "get_runtime": "sensormeter.runtime",
    "set_runtime": "sensormeter.runtime",
    "make_redis": "sensormeter.runtime",
    "make_queue": "sensormeter.tasks.queue",
}


def __getattr__(name: str) -> Any:
    """Give a deprecated name (PEP 562) with a warning; any other unknown name is an error."""
    module = DEPRECATED.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"sensormeter.{name} is deprecated and will be removed from the package namespace; "
        f"import it from {module} instead",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(importlib.import_module(module), name)


__all__ = [
    # Queue reports (the host app)
    "Settings",
    "enqueue_fanout",
    "enqueue_sensor_report",
    # Run the RQ side (workers and scheduler)
    "process_meter_report",
    "register_hourly_job",
    "report_all_sensor_counts",
    # Plug in data
    "DatabaseUsageSource",
    "InMemoryUsageSource",
    "UsageSource",
    # Plug in Stripe
    "InMemoryMeterClient",
    "MeterClient",
    "MeterEvent",
    "StripeMeterClient",
    "StripeStreamClient",
    # Handle webhooks
    "WebhookResult",
    "handle_stripe_webhook",
    # Watch it (metrics in the host's own web process)
    "make_metrics_app",
    # Errors
    "ConfigurationError",
    "InvalidOrganizationId",
    "ReportsFailed",
    "RetryableReportError",
    "SensormeterError",
    "ServiceUnavailable",
    "WebhookError",
    # Deprecated (see DEPRECATED): kept here for this release so `from sensormeter import *`
    # still brings them in (with a warning each); they leave __all__ with the names.
    "Runtime",
    "get_runtime",
    "make_queue",
    "make_redis",
    "set_runtime",
]
__version__ = "0.1.0"

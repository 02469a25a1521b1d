"""sensormeter: report each organization's active-sensor count to a Stripe Billing Meter.

The public API: queue a report when sensors change, the RQ job functions, the hourly
schedule, and the settings object everything is configured through.
"""

from __future__ import annotations

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
from .runtime import Runtime, get_runtime, make_redis, set_runtime
from .settings import Settings
from .tasks.fanout import enqueue_fanout, report_all_sensor_counts
from .tasks.queue import make_queue
from .tasks.report import enqueue_sensor_report, process_meter_report
from .tasks.schedule import register_hourly_job
from .usage import DatabaseUsageSource, InMemoryUsageSource, UsageSource
from .webhook import WebhookResult, handle_stripe_webhook

__all__ = [
    "ConfigurationError",
    "DatabaseUsageSource",
    "InMemoryMeterClient",
    "InMemoryUsageSource",
    "InvalidOrganizationId",
    "MeterClient",
    "MeterEvent",
    "ReportsFailed",
    "RetryableReportError",
    "Runtime",
    "SensormeterError",
    "ServiceUnavailable",
    "Settings",
    "StripeMeterClient",
    "StripeStreamClient",
    "UsageSource",
    "WebhookError",
    "WebhookResult",
    "enqueue_fanout",
    "enqueue_sensor_report",
    "get_runtime",
    "handle_stripe_webhook",
    "make_redis",
    "make_queue",
    "process_meter_report",
    "register_hourly_job",
    "report_all_sensor_counts",
    "set_runtime",
]
__version__ = "0.1.0"

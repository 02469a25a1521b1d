"""Prometheus metrics: a collector that reads the ledger and Redis on every scrape.

Nothing is counted in the process (no prometheus_client multiprocess directory, no shared
state): each scrape asks the database and Redis, so the numbers are the same whichever
process serves them. Serve them with ``sensormeter metrics`` or mount :func:`make_metrics_app`
in a web process of your own, behind its authentication (docs/operations.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import peewee
import redis
from prometheus_client import CollectorRegistry
from prometheus_client import make_wsgi_app as prometheus_wsgi_app
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..db import utcnow
from ..errors import SensormeterError
from ..logs import get_logger
from ..quarantine import CUSTOMER, METER, open_quarantines
from ..runtime import make_redis
from ..settings import Settings
from ..tasks.catchup import last_finding
from ..tasks.recovery import stale_after
from ..tasks.retention import last_prune
from ..usage.unbilled import UnbilledTotals, last_totals
from .readings import (
    QUEUE_STATES,
    connect_database,
    count_abandoned_pending,
    newest_hourly_delivery,
    oldest_unsent,
    queue_jobs,
    registrations,
    window_counts,
    window_start,
)

log = get_logger(__name__)

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
EPOCH = datetime(1970, 1, 1)


def _seconds(moment: datetime | None) -> float:
    """Unix time of a naive UTC datetime (0 for None: "never")."""
    return 0.0 if moment is None else (moment - EPOCH).total_seconds()


def _gauge(name: str, doc: str, value: float | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


class SensormeterCollector(Collector):
    """Reads every sensormeter metric fresh at each scrape (connections opened and closed)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def describe(self) -> Iterable[Metric]:
        """Nothing: registering the collector must not connect (prometheus_client would)."""
        return []

    def collect(self) -> Iterator[Metric]:
        """One scrape: the ledger, then Redis; ``sensormeter_up`` says which one answered."""
        up = GaugeMetricFamily(
            "sensormeter_up", "1 if the service answered this scrape, else 0", labels=["service"]
        )
        metrics: list[Metric] = []
        for service, read in (("database", self._ledger), ("redis", self._redis)):
            try:
                metrics.extend(read())
            except (SensormeterError, peewee.DatabaseError, redis.RedisError) as exc:
                log.warning("metrics.unavailable", service=service, error=str(exc))
                up.add_metric([service], 0)
            else:
                up.add_metric([service], 1)
        yield up
        yield from metrics

    def _ledger(self) -> list[Metric]:
        settings, now = self.settings, utcnow()
        database = connect_database(settings.database_url)
        try:
            since = window_start(settings, now)
            counts = window_counts(database, since)
            newest = newest_hourly_delivery(database, settings.meter_event_name, since)
            oldest = oldest_unsent(database)
            abandoned = count_abandoned_pending(database, now - stale_after(settings))
            quarantines = open_quarantines(database)
        finally:
            database.close()
        reports = GaugeMetricFamily(
            "sensormeter_reports",
            "Ledger rows stamped in the catch-up window (SENSORMETER_CATCHUP_HOURS), by status",
            labels=["status"],
        )
        for status, n in counts.items():
            reports.add_metric([status], n)
        return [
            reports,
            _gauge(
                "sensormeter_last_hourly_report_timestamp_seconds",
                "Stamp of the newest sent hourly report in the window (0: none)",
                _seconds(newest),
            ),
            _gauge(
                "sensormeter_oldest_unsent_report_age_seconds",
                "Age of the oldest pending or failed ledger row (0: none)",
                max(0.0, (now - oldest).total_seconds()) if oldest else 0.0,
            ),
            _gauge(
                "sensormeter_abandoned_pending_reports",
                "Pending rows untouched for longer than a job and its retries can keep them",
                abandoned,
            ),
            _gauge(
                "sensormeter_quarantined_customers",
                "Customers Stripe refuses, whose reports are kept back (sensormeter quarantine)",
                sum(1 for q in quarantines if q.scope == CUSTOMER),
            ),
            _gauge(
                "sensormeter_meter_paused",
                "1 while sending to the meter is paused because Stripe refuses it, else 0",
                int(
                    any(
                        q.scope == METER and q.subject == settings.meter_event_name
                        for q in quarantines
                    )
                ),
            ),
        ]

    def _redis(self) -> list[Metric]:
        settings = self.settings
        connection = make_redis(settings.redis_url)
        try:
            jobs = queue_jobs(settings, connection)
            registered = registrations(connection, settings.queue_name)
            finding = last_finding(connection, settings.queue_name)
            unbilled = last_totals(connection, settings.queue_name)
            pruned = last_prune(connection, settings.queue_name)
        finally:
            connection.close()
        queue = GaugeMetricFamily(
            "sensormeter_queue_jobs", "Jobs of the reporting queue by state", labels=["state"]
        )
        for state in QUEUE_STATES:
            queue.add_metric([state], jobs[state])
        schedule = GaugeMetricFamily(
            "sensormeter_schedule_registered",
            "1 if the scheduled job is registered with rq-scheduler, else 0",
            labels=["job"],
        )
        for job, next_run in registered.items():
            schedule.add_metric([job], 0 if next_run is None else 1)
        metrics: list[Metric] = [queue, schedule]
        if finding is not None:  # absent until a catch-up has completed
            metrics.append(
                _gauge(
                    "sensormeter_unreported_hours",
                    "Billable organization-hours of the window without a delivered hourly "
                    "report, as the last catch-up found them (it queued their reports)",
                    finding.missing,
                )
            )
            metrics.append(
                _gauge(
                    "sensormeter_catchup_last_run_timestamp_seconds",
                    "When the last catch-up completed",
                    finding.checked_at,
                )
            )
        if unbilled is not None:  # absent until a survey has run (and for a source without it)
            metrics.extend(_unbilled_metrics(unbilled))
        if pruned is not None:  # absent until the ledger prune has run
            metrics.extend(_prune_metrics(pruned))
        return metrics


def _prune_metrics(pruned: dict[str, Any]) -> list[Metric]:
    """The last ledger prune: when, how many rows it removed, and whether it finished."""
    at = datetime.fromisoformat(pruned["at"])
    return [
        _gauge(
            "sensormeter_retention_last_prune_timestamp_seconds",
            "When the last ledger prune (SENSORMETER_RETENTION_DAYS) ran",
            at.timestamp(),
        ),
        _gauge(
            "sensormeter_retention_last_prune_removed",
            "Ledger rows the last prune removed",
            pruned["reports"],
        ),
        _gauge(
            "sensormeter_retention_last_prune_complete",
            "1 if the last prune removed everything older than kept, 0 if its budget ran out",
            1 if pruned["complete"] else 0,
        ),
    ]


def _unbilled_metrics(found: UnbilledTotals) -> list[Metric]:
    """The last unbilled-usage survey's totals by reason (stored in Redis by its job)."""
    sensors = GaugeMetricFamily(
        "sensormeter_unbilled_sensors",
        "Active sensors of organizations that are not billed, by reason, as the last "
        "hourly survey found them",
        labels=["reason"],
    )
    organizations = GaugeMetricFamily(
        "sensormeter_unbilled_organizations",
        "Organizations with active sensors that are not billed, by reason (last survey)",
        labels=["reason"],
    )
    for reason in sorted(found.sensors):
        sensors.add_metric([reason], found.sensors[reason])
        organizations.add_metric([reason], found.organizations.get(reason, 0))
    survey = _gauge(
        "sensormeter_unbilled_last_survey_timestamp_seconds",
        "When the last unbilled-usage survey completed",
        found.checked_at,
    )
    return [sensors, organizations, survey]


def make_registry(settings: Settings) -> CollectorRegistry:
    """A registry holding only sensormeter's collector (no process or platform metrics)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SensormeterCollector(settings))
    return registry


def make_metrics_app(settings: Settings) -> WSGIApp:
    """A WSGI app serving the metrics as Prometheus text, on any path it is mounted at.

    Mount it in the host's own web process behind the host's authentication, e.g. with
    werkzeug's ``DispatcherMiddleware(app, {"/internal/metrics": make_metrics_app(settings)})``.
    """
    app: WSGIApp = prometheus_wsgi_app(make_registry(settings))
    return app


def _routes(metrics: WSGIApp) -> WSGIApp:
    """``/metrics`` serves the metrics; anything else is a 404 naming it."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/metrics":
            return metrics(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"sensormeter serves its metrics at /metrics\n"]

    return app


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the stdlib's name)
        """Write no access line per scrape (one a minute per Prometheus adds nothing)."""


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow scrape never holds up the next one, nor the exit


def make_metrics_server(settings: Settings, host: str, port: int) -> WSGIServer:
    """A threaded HTTP server of ``/metrics`` on host:port (port 0: a free one); not started."""
    return make_server(
        host,
        port,
        _routes(make_metrics_app(settings)),
        server_class=_ThreadingServer,
        handler_class=_QuietHandler,
    )


def metrics_url(server: WSGIServer) -> str:
    """The URL a server from :func:`make_metrics_server` serves its metrics at."""
    host, port = server.server_address[:2]
    name = host.decode() if isinstance(host, bytes) else str(host)
    return f"http://{name}:{port}/metrics"

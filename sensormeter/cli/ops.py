"""What watches sensormeter: ``sensormeter metrics`` (Prometheus) and ``sensormeter check``."""

from __future__ import annotations

import sys

import click

from ..errors import ConfigurationError
from .common import WholeNumber, friendly_errors, load_settings


@click.command("metrics")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", default=9464, show_default=True, type=WholeNumber(0, 65535), help="Port (0: any)."
)
@friendly_errors
def metrics(host: str, port: int) -> None:
    """Serve Prometheus metrics at /metrics, read from the ledger and Redis at each scrape."""
    from ..db import make_database
    from ..ops.metrics import make_metrics_server, metrics_url
    from ..runtime import make_redis

    settings = load_settings()
    # A malformed URL stops it now; a service that is down shows as sensormeter_up 0 instead.
    make_database(settings.database_url)
    make_redis(settings.redis_url)
    server = make_metrics_server(settings, host, port)
    click.echo(f"serving sensormeter metrics at {metrics_url(server)}", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@click.command("check")
def check() -> None:
    """Exit 0 when reporting is healthy, else print one line per problem and exit 1.

    Exit 2 when Redis or the database cannot be reached. Every line starts with
    sensormeter.check.ok or sensormeter.check.failed: alert on the latter in the logs.
    """
    from ..ops.health import CHECK_FAILED, CHECK_OK, PROBLEMS, run_check

    try:
        settings = load_settings()
        result = run_check(settings)
    except ConfigurationError as exc:
        click.echo(f"{CHECK_FAILED} configuration: {exc} (fix the environment variable)")
        sys.exit(PROBLEMS)
    for problem in result.problems + result.notices:
        click.echo(problem.line())
    if not result.problems:
        click.echo(
            f"{CHECK_OK}: reporting on {settings.queue_name} is healthy (scheduled jobs "
            "registered, hourly reports delivered, no failed or abandoned reports)"
        )
    sys.exit(result.status)

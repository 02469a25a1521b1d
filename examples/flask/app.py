"""A Flask host on sensormeter's default tables: sensor changes queue a report, and Stripe's
meter error reports mark ledger rows. Run with `flask --app app:create_app run`."""

from __future__ import annotations

from datetime import UTC, datetime

import redis
from flask import Flask, request

from sensormeter import (
    ServiceUnavailable,
    Settings,
    WebhookError,
    enqueue_sensor_report,
    handle_stripe_webhook,
)
from sensormeter.models import Organization, Sensor, open_database


def create_app(settings: Settings | None = None) -> Flask:
    """Build the app; sensormeter's settings come from the environment unless given."""
    config = settings if settings is not None else Settings.from_env()
    # Binds sensormeter's models (organizations, sensors, the ledger) to DATABASE_URL; fails
    # at start, with one line, when the database does not answer.
    database = open_database(config.database_url, create=False)
    database.close()
    # One Redis client for the process; it connects on first use. On Heroku Redis (rediss://
    # with a self-signed certificate) add ssl_cert_reqs=None.
    connection = redis.Redis.from_url(config.redis_url)
    app = Flask(__name__)
    app.extensions["sensormeter"] = {"settings": config, "database": database}

    @app.before_request
    def connect() -> None:
        database.connect(reuse_if_open=True)

    @app.teardown_request
    def close(exc: BaseException | None) -> None:
        if not database.is_closed():
            database.close()

    def report(org_id: str) -> str | None:
        # Called after the commit: the worker counts on its own connection, maybe at once.
        try:
            return enqueue_sensor_report(org_id, settings=config, connection=connection)
        except ServiceUnavailable as exc:
            # The change is saved; the next hourly report carries the count.
            app.logger.warning("sensor report not queued for %s: %s", org_id, exc)
            return None

    @app.post("/organizations/<org_id>/sensors")
    def add_sensor(org_id: str) -> tuple[dict[str, object], int]:
        """Register a sensor, then queue the organization's report."""
        if Organization.get_or_none(Organization.id == org_id) is None:
            return {"error": "unknown organization"}, 404
        with database.atomic():
            sensor = Sensor.create(organization=org_id)
        return {"sensor_id": sensor.id, "report_job": report(org_id)}, 201

    @app.delete("/organizations/<org_id>/sensors/<int:sensor_id>")
    def remove_sensor(org_id: str, sensor_id: int) -> tuple[dict[str, object], int]:
        """Remove a sensor (deleted_at, so past hours still count it), then queue the report."""
        with database.atomic():
            removed = (
                Sensor.update(deleted_at=datetime.now(UTC).replace(tzinfo=None))  # naive UTC
                .where(
                    (Sensor.id == sensor_id)
                    & (Sensor.organization == org_id)
                    & Sensor.deleted_at.is_null()
                )
                .execute()
            )
        if not removed:
            return {"error": "no such sensor"}, 404
        return {"sensor_id": sensor_id, "report_job": report(org_id)}, 200

    @app.post("/stripe/meter-errors")
    def stripe_meter_errors() -> tuple[dict[str, object], int]:
        """Stripe's meter error reports: mark the refused ledger rows rejected."""
        try:
            result = handle_stripe_webhook(
                request.get_data(),  # the raw bytes Stripe signed; never request.json
                request.headers.get("Stripe-Signature"),
                settings=config,
                database=database,
            )
        except WebhookError as exc:
            # 400: not from Stripe or unreadable. 503: Stripe could not be asked; it retries.
            return {"error": exc.problem}, (503 if exc.retryable else 400)
        return {"handled": result.handled, "rows_marked": result.rows_marked}, 200

    return app

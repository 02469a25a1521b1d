"""A FastAPI host on sensormeter's default tables, with every blocking call off the event loop.

sensormeter is synchronous: enqueueing is a Redis round trip, the webhook handler fetches the
error report from Stripe (seconds, with retries, when Stripe is slow) and reads and writes the
ledger. Run inside an ``async def`` endpoint, each would stop the event loop, and with it every
other request, for its whole duration. Two ways keep them off it, both used here:

- a plain ``def`` endpoint, when the whole body is blocking: FastAPI runs it in AnyIO's
  worker-thread pool itself, so nothing can be forgotten (``add_sensor``);
- an ``async def`` endpoint that hands the blocking part to ``run_in_threadpool`` (the same
  pool, through ``anyio.to_thread``), when it must await something first: the webhook awaits
  the raw body, which the signature covers (``stripe_meter_errors``).

Run with ``uvicorn app:create_app --factory``.
"""

from __future__ import annotations

from datetime import UTC, datetime

import redis
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from sensormeter import (
    ServiceUnavailable,
    Settings,
    WebhookError,
    WebhookResult,
    enqueue_sensor_report,
    handle_stripe_webhook,
)
from sensormeter.models import Organization, Sensor, open_database


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; sensormeter's settings come from the environment unless given."""
    config = settings if settings is not None else Settings.from_env()
    # Binds sensormeter's models to DATABASE_URL. peewee keeps one connection per thread:
    # each blocking call below opens and closes its own in the pool thread it runs in.
    database = open_database(config.database_url, create=False)
    database.close()
    # One Redis client (a thread-safe pool) for the process. On Heroku Redis (rediss:// with
    # a self-signed certificate) add ssl_cert_reqs=None.
    connection = redis.Redis.from_url(config.redis_url)
    app = FastAPI()
    app.state.sensormeter = {"settings": config, "database": database}

    def report(org_id: str) -> str | None:
        # Called after the commit: the worker counts on its own connection, maybe at once.
        try:
            return enqueue_sensor_report(org_id, settings=config, connection=connection)
        except ServiceUnavailable:
            return None  # the change is saved; the next hourly report carries the count

    @app.post("/organizations/{org_id}/sensors", status_code=201)
    def add_sensor(org_id: str) -> dict[str, object]:
        """Register a sensor, then queue the organization's report (runs in a pool thread)."""
        with database.connection_context():
            if Organization.get_or_none(Organization.id == org_id) is None:
                raise HTTPException(404, "unknown organization")
            with database.atomic():
                sensor = Sensor.create(organization=org_id)
        return {"sensor_id": sensor.id, "report_job": report(org_id)}

    @app.delete("/organizations/{org_id}/sensors/{sensor_id}")
    def remove_sensor(org_id: str, sensor_id: int) -> dict[str, object]:
        """Remove a sensor (deleted_at, so past hours still count it), then queue the report."""
        with database.connection_context(), database.atomic():
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
            raise HTTPException(404, "no such sensor")
        return {"sensor_id": sensor_id, "report_job": report(org_id)}

    def handle(payload: bytes, signature: str | None) -> WebhookResult:
        # Blocking: the Stripe fetch and the ledger update, on this thread's own connection.
        with database.connection_context():
            return handle_stripe_webhook(payload, signature, settings=config, database=database)

    @app.post("/stripe/meter-errors")
    async def stripe_meter_errors(request: Request) -> JSONResponse:
        """Stripe's meter error reports: mark the refused ledger rows rejected."""
        payload = await request.body()  # the raw bytes Stripe signed
        try:
            result = await run_in_threadpool(
                handle, payload, request.headers.get("Stripe-Signature")
            )
        except WebhookError as exc:
            # 400: not from Stripe or unreadable. 503: Stripe could not be asked; it retries.
            return JSONResponse({"error": exc.problem}, status_code=503 if exc.retryable else 400)
        return JSONResponse({"handled": result.handled, "rows_marked": result.rows_marked})

    return app

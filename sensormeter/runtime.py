"""The live connections of one process, built from Settings on first use.

RQ calls job functions with their arguments only, so a job reaches its database, Redis and
Stripe client through :func:`get_runtime`. Like dramatiq's ``get_broker``, this is a plain module
variable behind a getter/setter pair: nothing connects at import, tests swap it with
:func:`set_runtime`, and a forked process builds its own instead of sharing sockets.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

import peewee
import redis

from .errors import ConfigurationError, ServiceUnavailable
from .gate import Gate
from .guard import Guard
from .meters import make_meter_client
from .meters.base import MeterClient
from .migrations import check_schema
from .models import open_database
from .quarantine import QuarantineGate
from .reporter import Reporter
from .settings import Settings, redact_url, split_url
from .usage import UsageSource, load_usage_source


def make_redis(url: str) -> redis.Redis:
    """A Redis client for ``url`` (no connection yet); accepts Heroku's self-signed rediss://.

    Raises:
        ConfigurationError: naming REDIS_URL, when redis-py cannot read the URL.
    """
    options: dict[str, object] = {}
    if split_url(url, "REDIS_URL").scheme == "rediss" and "ssl_cert_reqs" not in url:
        options["ssl_cert_reqs"] = None
    try:
        return redis.Redis.from_url(url, **options)
    except ValueError as exc:
        # redis-py's messages name the bad part (e.g. a query option), never the password.
        raise ConfigurationError("REDIS_URL", f"{redact_url(url)!r}: {exc}") from None


def check_redis(connection: redis.Redis, url: str) -> None:
    """Ping Redis; raise ServiceUnavailable with a password-free URL when it does not answer."""
    try:
        connection.ping()
    except redis.RedisError as exc:
        raise ServiceUnavailable("Redis", redact_url(url), str(exc) or type(exc).__name__) from None


@dataclass
class Runtime:
    """Settings plus the connections built from them, for one process."""

    settings: Settings
    database: peewee.Database
    redis: redis.Redis
    source: UsageSource
    meter: MeterClient
    # What may keep a report back before it is sent (gate.py), asked in this order.
    gates: list[Gate] = field(default_factory=list)
    pid: int = field(default_factory=os.getpid)
    # Set by share_runtime: a process forked from this one may take it over (see get_runtime).
    shared: bool = False

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        meter: MeterClient | None = None,
        create_database: bool = False,
    ) -> Runtime:
        """Open the database, the Redis client, the usage source and the Stripe client.

        A SQLite file that does not exist is refused (ServiceUnavailable) unless
        ``create_database`` is true: a mistyped path must not become an empty database.
        A database whose schema is behind this release is refused (SchemaOutdated), unless
        ``create_database`` is true, where the caller creates the tables next (the demo).
        """
        database = open_database(settings.database_url, create=create_database)
        if not create_database:
            check_schema(database)
        connection = make_redis(settings.redis_url)
        # Asked in this order: the quarantine first (a refused customer's report is not judged
        # by later gates), then the anomaly guard.
        gates: list[Gate] = [QuarantineGate(settings.customer_payload_key)]
        if settings.guard:
            gates.append(Guard.from_settings(settings))
        return cls(
            settings=settings,
            database=database,
            redis=connection,
            source=load_usage_source(settings, database),
            meter=meter if meter is not None else make_meter_client(settings, connection),
            gates=gates,
        )

    def reporter(self) -> Reporter:
        """The processor for this process's source, Stripe client, event name and gates."""
        return Reporter(self.source, self.meter, self.settings.meter_event_name, self.gates)

    def close(self) -> None:
        """Close the database connection and the Redis pool."""
        if not self.database.is_closed():
            self.database.close()
        self.redis.close()


_runtime: Runtime | None = None


def get_runtime() -> Runtime:
    """The process's runtime, built from the environment on first use (and again after a fork).

    A process forked from one that shared its runtime (:func:`share_runtime`: the worker,
    whose work-horses RQ forks one per job) takes that one over while it holds no database
    connection, and connects on its own.
    """
    global _runtime
    if _runtime is None or _runtime.pid != os.getpid():
        if _runtime is not None and _runtime.shared and _runtime.database.is_closed():
            # Nothing to share by mistake: no database connection, and redis-py drops the
            # parent's connections in a forked process. A host's usage source may hold its
            # own connection: it is built anew, as before. Building all anew cost about 50 ms
            # of CPU a job (docs/performance.md, "Where a report's CPU goes").
            inherited = _runtime
            _runtime = replace(
                inherited,
                pid=os.getpid(),
                source=load_usage_source(inherited.settings, inherited.database),
            )
        else:
            # After a fork the parent's sockets must not be reused, so build fresh ones.
            _runtime = Runtime.build(Settings.from_env())
    return _runtime


def share_runtime(runtime: Runtime) -> None:
    """Install ``runtime``, its connections closed, for the processes forked from this one."""
    global _runtime
    runtime.close()
    runtime.shared = True
    _runtime = runtime


def set_runtime(runtime: Runtime | None) -> None:
    """Install (or clear, with None) the process's runtime; for process start-up and tests."""
    global _runtime
    _runtime = runtime

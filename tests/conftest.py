"""Fixtures: real Redis, SQLite and PostgreSQL, and the HTTP Stripe emulator.

On a laptop without PostgreSQL or Redis the tests that need them skip; in CI (CI=true) a
missing service is a failure, never a silent skip.

The collection hook at the end marks each test by what it reaches (see tests/tiers.py), so
``pytest -m "not integration"`` is the fast tier.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import peewee
import pytest
import redis

from sensormeter.emulator import StripeEmulator
from sensormeter.models import MODELS, create_tables, open_database
from sensormeter.runtime import Runtime, set_runtime
from sensormeter.settings import Settings

from .tiers import mark_tiers

REDIS_URL = os.environ.get("SENSORMETER_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
POSTGRES_URL = os.environ.get(
    "SENSORMETER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
TEST_QUEUE = "sensormeter-test"


def unavailable(service: str, reason: object) -> None:
    """Fail in CI, skip elsewhere, when a service the test needs is not there."""
    message = f"{service} is not available: {reason}"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def redis_conn() -> Iterator[redis.Redis]:
    """A real Redis connection on a test database, emptied before and after."""
    connection = redis.Redis.from_url(REDIS_URL)
    try:
        connection.ping()
    except redis.RedisError as exc:
        unavailable("Redis", exc)
    connection.flushdb()
    yield connection
    connection.flushdb()
    connection.close()


def _drop_all(database: peewee.Database) -> None:
    database.drop_tables(list(reversed(MODELS)), safe=True, cascade=True) if isinstance(
        database, peewee.PostgresqlDatabase
    ) else database.drop_tables(list(reversed(MODELS)), safe=True)


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test that uses a database runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'sensormeter-test.db'}"
    try:
        probe = open_database(POSTGRES_URL)
        probe.close()
    except Exception as exc:  # noqa: BLE001 (any failure means the server is not usable here)
        unavailable("PostgreSQL", exc)
    return POSTGRES_URL


@pytest.fixture
def database(database_url: str) -> Iterator[peewee.Database]:
    """A database with fresh sensormeter tables."""
    db = open_database(database_url)
    _drop_all(db)
    create_tables(db)
    yield db
    if not db.is_closed():
        db.close()
    db.connect(reuse_if_open=True)
    _drop_all(db)
    db.close()


@pytest.fixture
def emulator() -> Iterator[StripeEmulator]:
    """The bundled Stripe emulator, on a free loopback port."""
    with StripeEmulator() as emu:
        yield emu


@pytest.fixture
def settings(database_url: str, emulator: StripeEmulator) -> Settings:
    """Settings pointing at the test services; retries are immediate so tests stay fast."""
    return Settings(
        redis_url=REDIS_URL,
        database_url=database_url,
        stripe_api_key="sk_test_sensormeter_tests",
        stripe_api_base=emulator.base_url,
        queue_name=TEST_QUEUE,
        max_retries=2,
        retry_backoff_seconds=0,
        stripe_timeout_seconds=2,
    )


@pytest.fixture
def runtime(
    settings: Settings, database: peewee.Database, redis_conn: redis.Redis
) -> Iterator[Runtime]:
    """The process runtime (real database, Redis and Stripe client), installed for job calls."""
    rt = Runtime.build(settings)
    set_runtime(rt)
    yield rt
    set_runtime(None)
    rt.close()


def cli_env(settings: Settings, **extra: str) -> dict[str, str]:
    """Environment for a ``sensormeter`` subprocess that uses ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SENSORMETER_", "STRIPE_"))}
    env.update(
        {
            "REDIS_URL": settings.redis_url,
            "DATABASE_URL": settings.database_url,
            "STRIPE_API_KEY": settings.stripe_api_key or "",
            "STRIPE_API_BASE": settings.stripe_api_base or "",
            "SENSORMETER_QUEUE": settings.queue_name,
            "SENSORMETER_MAX_RETRIES": str(settings.max_retries),
            "SENSORMETER_RETRY_BACKOFF_SECONDS": str(settings.retry_backoff_seconds),
            "SENSORMETER_STRIPE_TIMEOUT_SECONDS": str(settings.stripe_timeout_seconds),
            "SENSORMETER_CHUNK_SIZE": str(settings.chunk_size),
            "SENSORMETER_CATCHUP_HOURS": str(settings.catchup_hours),
            "SENSORMETER_PERIOD_CLOSE_MINUTES": str(settings.period_close_minutes),
        }
    )
    if settings.usage_source:
        env["SENSORMETER_USAGE_SOURCE"] = settings.usage_source
    env.update(extra)
    return env


SENSORMETER = [sys.executable, "-m", "sensormeter.cli"]


class QueryCounter(logging.Handler):
    """Counts the SQL statements peewee executes (it logs each one at DEBUG)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.statements: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.statements.append(str(record.msg))

    @property
    def selects(self) -> int:
        """Number of SELECT statements seen."""
        return sum(1 for s in self.statements if s.lstrip("('").upper().startswith("SELECT"))


@contextmanager
def count_queries() -> Iterator[QueryCounter]:
    """Count peewee's SQL statements inside the block."""
    logger = logging.getLogger("peewee")
    counter = QueryCounter()
    old_level = logger.level
    logger.addHandler(counter)
    logger.setLevel(logging.DEBUG)
    try:
        yield counter
    finally:
        logger.removeHandler(counter)
        logger.setLevel(old_level)


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by these markers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test ``integration`` and/or ``postgres`` by what it reaches (tests/tiers.py)."""
    mark_tiers(items)

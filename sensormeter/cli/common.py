"""What every command shares: one-line errors, ASCII-only numbers, settings, Redis."""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
import peewee
import redis

from ..errors import ConfigurationError, SensormeterError, shown
from ..logs import configure_logging
from ..runtime import check_redis, make_redis
from ..settings import ASCII_INTEGER, ASCII_NUMBER, Settings

F = TypeVar("F", bound=Callable[..., Any])


class BadArgument(click.BadParameter):
    """Raised for a bad command-line value; shown as one ``error:`` line, without the usage."""

    def show(self, file: Any = None) -> None:
        """Print the one line (click would print the usage text first)."""
        click.echo(f"error: {self.format_message()}", err=True, file=file)


class WholeNumber(click.IntRange):
    """An IntRange of ASCII digits only: int() also takes '1_000', '١٢' and full-width digits."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """Refuse anything but [+-]digits 0-9, then check the range as click does."""
        if isinstance(value, str) and not ASCII_INTEGER.fullmatch(value.strip()):
            raise BadArgument(
                f"{shown(value)} is not a whole number written with the digits 0-9", ctx, param
            )
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter as exc:
            raise BadArgument(exc.message, ctx, param) from None


class Number(click.FloatRange):
    """A FloatRange of ASCII digits only, never nan or inf (float() takes both)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """Refuse anything but a finite decimal number written with 0-9, then check the range."""
        if isinstance(value, str) and not ASCII_NUMBER.fullmatch(value.strip()):
            raise BadArgument(
                f"{shown(value)} is not a number written with the digits 0-9", ctx, param
            )
        try:
            number = super().convert(value, param, ctx)
        except click.BadParameter as exc:
            raise BadArgument(exc.message, ctx, param) from None
        if not math.isfinite(number):
            raise BadArgument(f"{shown(value)} is too large", ctx, param)
        return number


def fail(message: str) -> None:
    """Print one error line and exit (2 for an unreachable service, else 1)."""
    click.echo(f"error: {message}", err=True)
    sys.exit(1 if not message.startswith("cannot reach") else 2)


def friendly_errors(func: F) -> F:
    """Turn sensormeter, Redis and database errors into one clear line and a non-zero exit."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConfigurationError as exc:
            fail(f"{exc} (fix the environment variable and run again)")
        except SensormeterError as exc:
            fail(str(exc))
        except redis.RedisError as exc:
            fail(f"cannot reach Redis: {exc}")
        except peewee.DatabaseError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            schema_command = {"init-db", "migrate"} & set(sys.argv)
            hint = "" if schema_command else " (did you run 'sensormeter init-db'?)"
            fail(f"database error: {first}{hint}")

    return wrapper  # type: ignore[return-value]


def load_settings() -> Settings:
    """Read and validate the environment; set up this process's logging."""
    settings = Settings.from_env()
    configure_logging(settings.log_level, log_format=settings.log_format)
    return settings


def connect_redis(settings: Settings) -> redis.Redis:
    """A checked Redis connection (one clear error when Redis does not answer)."""
    connection = make_redis(settings.redis_url)
    check_redis(connection, settings.redis_url)
    return connection


def check_database(settings: Settings) -> None:
    """Open the database once and check its schema: a bad DATABASE_URL fails at start."""
    from ..migrations import check_schema
    from ..models import open_database

    database = open_database(settings.database_url, create=False)
    try:
        check_schema(database)
    finally:
        database.close()


def not_billable_reason(settings: Settings, organization_id: str) -> str | None:
    """Why the organization is not billable now, from the usage source; None when it is."""
    from ..migrations import check_schema
    from ..models import open_database
    from ..usage.loader import load_usage_source

    database = open_database(settings.database_url, create=False)
    try:
        check_schema(database)
        source = load_usage_source(settings, database)
        if organization_id in source.billable_customers([organization_id]):
            return None
        return source.explain_not_billable(organization_id)
    finally:
        database.close()

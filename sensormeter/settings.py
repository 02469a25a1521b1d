"""One validated, frozen settings object, built from the environment at the process edge."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import SplitResult, urlsplit, urlunsplit

from .defaults import DEFAULT_RETENTION_DAYS, MAX_PAST_HOURS, MIN_RETENTION_DAYS
from .errors import ConfigurationError, shown

SUBSCRIPTION_STATUSES = frozenset(
    {
        "incomplete",
        "incomplete_expired",
        "trialing",
        "active",
        "past_due",
        "canceled",
        "unpaid",
        "paused",
    }
)
STRIPE_BASES = ("https://api.stripe.com", "https://meter-events.stripe.com")
# Stripe spells it "trialing"; host schemas seeded before that often say "trial".
STATUS_ALIASES = {"trial": "trialing"}

_EVENT_NAME = re.compile(r"^[A-Za-z0-9_.:\-]{1,100}$")
_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
_PAYLOAD_KEY = re.compile(r"^[A-Za-z0-9_]{1,100}$")
_STRIPE_KEY = re.compile(r"^(sk|rk)_(test|live)_[A-Za-z0-9_]+$")
MAX_CATCHUP_HOURS = MAX_PAST_HOURS  # Stripe's 35 days, less an hour
_USAGE_SOURCE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
# ASCII digits only: int() and float() also take '1_000', Arabic-Indic or full-width digits,
# 'nan' and 'inf', none of which anybody means in a setting.
ASCII_INTEGER = re.compile(r"[+-]?[0-9]+")
ASCII_NUMBER = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")
_REDIS_DB_PATH = re.compile(r"/?[0-9]*")


def split_url(url: str, name: str) -> SplitResult:
    """Split a URL, port included; raise ConfigurationError naming ``name`` when it cannot be.

    ``urlsplit`` raises a bare ValueError on a malformed IPv6 host ("Invalid IPv6 URL"), and
    ``.port`` on a port that is not a number in 0-65535. Neither message holds the password.
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (reading it is the check)
    except ValueError as exc:
        raise ConfigurationError(name, f"is not a valid URL ({exc})") from None
    return parts


def redact_url(url: str) -> str:
    """Return the URL with any password replaced by ``***`` so it can be logged or printed."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparseable url>"
    if password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def normalize_status(status: str) -> str:
    """Map a subscription status to Stripe's spelling (``trial`` becomes ``trialing``)."""
    lowered = status.strip().lower()
    return STATUS_ALIASES.get(lowered, lowered)


@dataclass(frozen=True, repr=False)
class Settings:
    """Everything sensormeter needs to run; build it with :meth:`from_env` at the process edge."""

    redis_url: str = "redis://localhost:6379/0"
    database_url: str = "sqlite:///sensormeter.db"
    stripe_api_key: str | None = None
    stripe_api_base: str | None = None
    meter_event_name: str = "active_sensors"
    billable_statuses: frozenset[str] = frozenset({"active", "trialing"})
    queue_name: str = "meter-reporting"
    chunk_size: int = 500
    max_retries: int = 5
    retry_backoff_seconds: float = 10.0
    stripe_timeout_seconds: float = 20.0
    customer_payload_key: str = "stripe_customer_id"
    value_payload_key: str = "value"
    usage_source: str | None = None
    job_timeout_seconds: int = 300
    # A running job's time to finish after SIGTERM: honcho kills at 5 s, Heroku at 30 s.
    shutdown_grace_seconds: int = 2
    transport: str = "v1"
    # Stripe requests in flight per report job; 0 is auto: v1 follows the measured latency
    # (sensormeter/meters/inflight.py), v2 keeps V2_IN_FLIGHT batches.
    max_in_flight: int = 0
    rate_limit: float | None = None
    log_level: str = "INFO"
    log_format: str | None = None  # json or console; None: console on a terminal, else JSON
    https_proxy: str | None = None
    catchup_hours: int = 48
    period_close_minutes: int = 10
    invoice_grace_hours: int = 1
    stripe_webhook_secret: str | None = None
    # The anomaly guard (sensormeter/guard): hold a report far off the organization's recent
    # delivered values, recount it after a short wait (docs/operations.md, "Held reports").
    guard: bool = True
    guard_min_count: int = 10
    guard_factor: float = 10.0
    guard_recount_minutes: int = 10
    # How many days of ledger rows (and billable history) the hourly prune keeps; 0 keeps
    # everything (sensormeter/ledger/retention.py, docs/operations.md "Ledger retention").
    retention_days: int = DEFAULT_RETENTION_DAYS

    def __post_init__(self) -> None:
        _validate(self)

    def __repr__(self) -> str:
        # Settings end up in tracebacks and logs: never show URL passwords or the key.
        fields = {
            **self.__dict__,
            "redis_url": redact_url(self.redis_url),
            "database_url": redact_url(self.database_url),
            "https_proxy": redact_url(self.https_proxy) if self.https_proxy else None,
            "stripe_api_key": "***" if self.stripe_api_key else None,
            "stripe_webhook_secret": "***" if self.stripe_webhook_secret else None,
        }
        return "Settings(" + ", ".join(f"{k}={v!r}" for k, v in fields.items()) + ")"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from environment variables; raise ConfigurationError naming a bad one."""
        env = dict(os.environ if environ is None else environ)
        # Proxies are conventionally spelled in either case.
        env.setdefault("HTTPS_PROXY", env.get("https_proxy", ""))
        values: dict[str, Any] = {}
        for variable, (attribute, parse) in VARIABLES.items():
            raw = env.get(variable)
            if raw is None or raw.strip() == "":
                continue
            try:
                values[attribute] = parse(raw.strip())
            except ValueError as exc:
                raise ConfigurationError(variable, str(exc)) from None
        try:
            return cls(**values)
        except ConfigurationError as exc:
            # Report the environment variable, not the attribute, to the person fixing it.
            variable = _ATTRIBUTE_TO_VARIABLE.get(exc.variable, exc.variable)
            raise ConfigurationError(variable, exc.problem) from None

    def with_overrides(self, **changes: Any) -> Settings:
        """Return a copy with some fields changed (validated again)."""
        return replace(self, **changes)

    @property
    def billable_status_values(self) -> list[str]:
        """The raw status strings to match in the database, aliases included, sorted."""
        values = set(self.billable_statuses)
        values.update(alias for alias, real in STATUS_ALIASES.items() if real in values)
        return sorted(values)

    def retry_intervals(self) -> list[float]:
        """Exponential backoff between job attempts: base, 2*base, 4*base, ..."""
        return [self.retry_backoff_seconds * (2**i) for i in range(self.max_retries)]

    @property
    def stripe_mode(self) -> str:
        """'live' or 'test', from the key ('test' when no key is set)."""
        return "live" if self.stripe_api_key and "_live_" in self.stripe_api_key else "test"

    def effective_rate_limit(self) -> float | None:
        """The ceiling of the shared client-side limit in events/s; None means no ceiling.

        Unset, it fits the key: 90% of Stripe's ceiling (live: 1,000/s on v1, 10,000/s taken
        as events on the v2 stream; test mode: 25 operations/s), and none when
        STRIPE_API_BASE points elsewhere than Stripe (the emulator sets its own). Below the
        ceiling, or without one, the limit adapts to Stripe's 429s (sensormeter.ratelimit).
        """
        if self.rate_limit is not None:
            return self.rate_limit or None
        base = self.stripe_api_base
        if base is not None and base.rstrip("/") not in STRIPE_BASES:
            return None
        if self.stripe_mode == "test":
            return 22.0
        return 9000.0 if self.transport == "v2" else 900.0

    def require_stripe_key(self) -> str:
        """Return the Stripe key, or raise ConfigurationError when it is missing."""
        if not self.stripe_api_key:
            raise ConfigurationError(
                "STRIPE_API_KEY",
                "is not set; use a test key (sk_test_...) with the emulator, "
                "or your restricted key in production",
            )
        return self.stripe_api_key

    def describe(self) -> dict[str, object]:
        """A log-safe summary: URLs without passwords, the key reduced to its mode."""
        key = self.stripe_api_key
        return {
            "redis_url": redact_url(self.redis_url),
            "database_url": redact_url(self.database_url),
            "stripe_key": None if not key else key.split("_", 2)[0] + "_" + key.split("_", 2)[1],
            "stripe_api_base": self.stripe_api_base or "https://api.stripe.com",
            "meter_event_name": self.meter_event_name,
            "billable_statuses": sorted(self.billable_statuses),
            "queue_name": self.queue_name,
            "chunk_size": self.chunk_size,
        }


def _statuses(raw: str) -> frozenset[str]:
    statuses = frozenset(normalize_status(s) for s in raw.split(",") if s.strip())
    if not statuses:
        raise ValueError("needs at least one status, e.g. active,trialing")
    return statuses


def _integer(raw: str) -> int:
    if not ASCII_INTEGER.fullmatch(raw):
        raise ValueError(f"{shown(raw)} is not a whole number (write it with the digits 0-9)")
    return int(raw)


def _in_flight(raw: str) -> int:
    return 0 if raw.strip().lower() == "auto" else _integer(raw)


def _number(raw: str) -> float:
    value = float(raw) if ASCII_NUMBER.fullmatch(raw) else math.nan
    if not math.isfinite(value):
        raise ValueError(f"{shown(raw)} is not a number (write it with the digits 0-9, e.g. 2.5)")
    return value


def _text(raw: str) -> str:
    return raw


def _days_or_off(raw: str) -> int:
    # 'off' (or 0) keeps the whole ledger; anything else is a number of days.
    return 0 if raw.lower() == "off" else _integer(raw)


def _switch(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("on", "true", "yes", "1"):
        return True
    if lowered in ("off", "false", "no", "0"):
        return False
    raise ValueError(f"{shown(raw)} must be on or off")


# Every environment variable sensormeter reads: (the Settings attribute, its parser).
VARIABLES: dict[str, tuple[str, Any]] = {
    "REDIS_URL": ("redis_url", _text),
    "DATABASE_URL": ("database_url", _text),
    "STRIPE_API_KEY": ("stripe_api_key", _text),
    "STRIPE_API_BASE": ("stripe_api_base", _text),
    "SENSORMETER_METER_EVENT_NAME": ("meter_event_name", _text),
    "SENSORMETER_BILLABLE_STATUSES": ("billable_statuses", _statuses),
    "SENSORMETER_QUEUE": ("queue_name", _text),
    "SENSORMETER_CHUNK_SIZE": ("chunk_size", _integer),
    "SENSORMETER_MAX_RETRIES": ("max_retries", _integer),
    "SENSORMETER_RETRY_BACKOFF_SECONDS": ("retry_backoff_seconds", _number),
    "SENSORMETER_STRIPE_TIMEOUT_SECONDS": ("stripe_timeout_seconds", _number),
    "SENSORMETER_CUSTOMER_PAYLOAD_KEY": ("customer_payload_key", _text),
    "SENSORMETER_VALUE_PAYLOAD_KEY": ("value_payload_key", _text),
    "SENSORMETER_USAGE_SOURCE": ("usage_source", _text),
    "SENSORMETER_JOB_TIMEOUT_SECONDS": ("job_timeout_seconds", _integer),
    "SENSORMETER_SHUTDOWN_GRACE_SECONDS": ("shutdown_grace_seconds", _integer),
    "SENSORMETER_TRANSPORT": ("transport", _text),
    "SENSORMETER_MAX_IN_FLIGHT": ("max_in_flight", _in_flight),
    "SENSORMETER_RATE_LIMIT": ("rate_limit", _number),
    "SENSORMETER_LOG_LEVEL": ("log_level", str.upper),
    "SENSORMETER_LOG_FORMAT": ("log_format", str.lower),
    "HTTPS_PROXY": ("https_proxy", _text),
    "SENSORMETER_CATCHUP_HOURS": ("catchup_hours", _integer),
    "SENSORMETER_PERIOD_CLOSE_MINUTES": ("period_close_minutes", _integer),
    "SENSORMETER_INVOICE_GRACE_HOURS": ("invoice_grace_hours", _integer),
    "STRIPE_WEBHOOK_SECRET": ("stripe_webhook_secret", _text),
    "SENSORMETER_GUARD": ("guard", _switch),
    "SENSORMETER_GUARD_MIN_COUNT": ("guard_min_count", _integer),
    "SENSORMETER_GUARD_FACTOR": ("guard_factor", _number),
    "SENSORMETER_GUARD_RECOUNT_MINUTES": ("guard_recount_minutes", _integer),
    "SENSORMETER_RETENTION_DAYS": ("retention_days", _days_or_off),
}
_ATTRIBUTE_TO_VARIABLE = {attribute: variable for variable, (attribute, _) in VARIABLES.items()}


def _validate(s: Settings) -> None:
    def fail(attribute: str, problem: str) -> None:
        raise ConfigurationError(attribute, problem)

    redis = split_url(s.redis_url, "redis_url")
    if redis.scheme not in ("redis", "rediss", "unix"):
        fail(
            "redis_url",
            f"{redact_url(s.redis_url)!r} must start with redis://, rediss:// or unix://",
        )
    if redis.scheme != "unix" and not _REDIS_DB_PATH.fullmatch(redis.path):
        # redis-py quietly uses database 0 for a path that is not a number.
        fail(
            "redis_url",
            f"{redact_url(s.redis_url)!r}: the path must be a database number, e.g. /0",
        )
    db = split_url(s.database_url, "database_url")
    if db.scheme not in ("sqlite", "postgres", "postgresql"):
        fail(
            "database_url",
            f"{redact_url(s.database_url)!r} must be sqlite:///path.db or postgresql://...",
        )
    if s.stripe_api_key is not None and not _STRIPE_KEY.match(s.stripe_api_key):
        fail(
            "stripe_api_key", "must look like sk_test_..., sk_live_..., rk_test_... or rk_live_..."
        )
    if s.stripe_api_base is not None:
        base = split_url(s.stripe_api_base, "stripe_api_base")
        if base.scheme not in ("http", "https") or not base.netloc:
            fail(
                "stripe_api_base", f"{shown(s.stripe_api_base)} must be an http(s):// base address"
            )
    if not _EVENT_NAME.match(s.meter_event_name):
        fail("meter_event_name", "must be 1-100 letters, digits, '_', '-', '.' or ':'")
    unknown = set(s.billable_statuses) - SUBSCRIPTION_STATUSES
    if unknown:
        fail(
            "billable_statuses",
            f"unknown status(es) {', '.join(sorted(unknown))}; "
            f"known: {', '.join(sorted(SUBSCRIPTION_STATUSES))}",
        )
    if not s.billable_statuses:
        fail("billable_statuses", "needs at least one status")
    if not _QUEUE_NAME.match(s.queue_name):
        fail("queue_name", "must be 1-64 letters, digits, '_' or '-'")
    if not 1 <= s.chunk_size <= 10_000:
        fail("chunk_size", f"{s.chunk_size} is out of range (1 to 10000)")
    if not 0 <= s.max_retries <= 20:
        fail("max_retries", f"{s.max_retries} is out of range (0 to 20)")
    if not 0 <= s.retry_backoff_seconds <= 3600:
        fail("retry_backoff_seconds", f"{s.retry_backoff_seconds} is out of range (0 to 3600)")
    if not 0 < s.stripe_timeout_seconds <= 120:
        fail("stripe_timeout_seconds", f"{s.stripe_timeout_seconds} is out of range (0 to 120]")
    for attribute in ("customer_payload_key", "value_payload_key"):
        if not _PAYLOAD_KEY.match(getattr(s, attribute)):
            fail(attribute, "must be 1-100 letters, digits or '_'")
    if s.usage_source is not None and not _USAGE_SOURCE.match(s.usage_source):
        fail("usage_source", f"{shown(s.usage_source)} must look like 'package.module:factory'")
    if s.transport not in ("v1", "v2"):
        fail(
            "transport",
            f"{shown(s.transport)} must be v1 (meter events) or v2 (meter event stream)",
        )
    if not 0 <= s.max_in_flight <= 256:
        fail("max_in_flight", f"{s.max_in_flight} is out of range (auto or 0, or 1 to 256)")
    if s.rate_limit is not None and not 0 <= s.rate_limit <= 1_000_000:
        fail("rate_limit", f"{s.rate_limit} is out of range (0 to 1000000 events/s; 0 = off)")
    if s.log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        fail("log_level", f"{shown(s.log_level)} must be DEBUG, INFO, WARNING or ERROR")
    if s.log_format not in (None, "json", "console"):
        fail(
            "log_format",
            f"{shown(s.log_format)} must be json or console"
            " (unset: console on a terminal, else json)",
        )
    if not 0 <= s.catchup_hours <= MAX_CATCHUP_HOURS:
        fail(
            "catchup_hours",
            f"{s.catchup_hours} is out of range (0 to {MAX_CATCHUP_HOURS}: Stripe accepts "
            "meter events up to 35 days old; 0 turns catch-up off)",
        )
    if not 0 <= s.period_close_minutes <= 30:
        fail(
            "period_close_minutes",
            f"{s.period_close_minutes} is out of range (0 to 30; 0 turns period-close reports off)",
        )
    if s.https_proxy is not None:
        # requests reads a proxy without a scheme as http://.
        proxy = s.https_proxy if "://" in s.https_proxy else "http://" + s.https_proxy
        if not split_url(proxy, "https_proxy").hostname:
            fail("https_proxy", "must be a proxy address, e.g. http://proxy.example.com:3128")
    if not 0 <= s.invoice_grace_hours <= 72:
        fail(
            "invoice_grace_hours",
            f"{s.invoice_grace_hours} is out of range (0 to 72, Stripe's invoice finalization "
            "grace period in hours; Stripe's default is 1)",
        )
    if s.stripe_webhook_secret is not None and not s.stripe_webhook_secret.startswith("whsec_"):
        fail("stripe_webhook_secret", "must be the endpoint's signing secret, whsec_...")
    _validate_guard(s, fail)
    if s.retention_days != 0 and not MIN_RETENTION_DAYS <= s.retention_days <= 36_500:
        fail(
            "retention_days",
            f"{s.retention_days} is out of range ({MIN_RETENTION_DAYS} to 36500 days, or 0/off "
            f"to keep everything): Stripe accepts reports up to 35 days old, and catch-up, "
            f"backfill and the period-close check look back that far",
        )
    if not 10 <= s.job_timeout_seconds <= 3600:
        fail("job_timeout_seconds", f"{s.job_timeout_seconds} is out of range (10 to 3600)")
    if not 0 <= s.shutdown_grace_seconds <= 25:
        # Heroku's SIGKILL comes 30 s after SIGTERM: leave the cut-off job time to hand back.
        fail("shutdown_grace_seconds", f"{s.shutdown_grace_seconds} is out of range (0 to 25)")


def _validate_guard(s: Settings, fail: Callable[[str, str], None]) -> None:
    """The anomaly guard's thresholds: each must leave ordinary growth alone."""
    if not isinstance(s.guard, bool):
        fail("guard", f"{shown(s.guard)} must be on or off")
    if not 1 <= s.guard_min_count <= 1_000_000:
        fail(
            "guard_min_count",
            f"{s.guard_min_count} is out of range (1 to 1000000 sensors: below it a change is "
            "never held)",
        )
    if not 2 <= s.guard_factor <= 1000:
        fail(
            "guard_factor",
            f"{s.guard_factor} is out of range (2 to 1000: a value this many times above or "
            "below the recent ones is held)",
        )
    if not 0 <= s.guard_recount_minutes <= 1440:
        fail(
            "guard_recount_minutes",
            f"{s.guard_recount_minutes} is out of range (0 to 1440; 0 turns the automatic "
            "recount off: held reports wait for 'sensormeter held release')",
        )

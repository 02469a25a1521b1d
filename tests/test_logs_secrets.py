"""Secrets never leave in an error's message: the text RQ stores in Redis, and the logs."""

from __future__ import annotations

import traceback

import pytest

from sensormeter.errors import (
    ConfigurationError,
    ReportsFailed,
    RetryableReportError,
    SensormeterError,
    ServiceUnavailable,
    WebhookError,
)
from sensormeter.logs import scrub

STRIPE_KEY = "sk_live_51HqSecretUnitKey0000abcd"
PASSWORD = "s3cret"
LEAKY = f"Stripe said: bad key {STRIPE_KEY}; cache at redis://:{PASSWORD}@cache.internal:6379/0"
SECRETS = (STRIPE_KEY, STRIPE_KEY.removeprefix("sk_live_"), PASSWORD)


def assert_clean(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


@pytest.mark.parametrize(
    "error",
    [
        RetryableReportError(["acme", "globex"], LEAKY),
        ReportsFailed(["acme"], LEAKY),
        ServiceUnavailable("Redis", f"redis://:{PASSWORD}@cache.internal:6379/0", LEAKY),
        WebhookError(LEAKY, event_id="evt_1", retryable=True),
        ConfigurationError("REDIS_URL", LEAKY),
        SensormeterError(LEAKY),
    ],
    ids=lambda e: type(e).__name__,
)
def test_error_messages_and_reasons_are_scrubbed(error: SensormeterError) -> None:
    """An error's message, traceback and attributes hold no Stripe key or URL password."""
    assert_clean(str(error))
    assert_clean("".join(traceback.format_exception(error)))
    for value in vars(error).values():
        assert_clean(str(value))
    assert "sk_live_***" in str(error) or "redis://:***@" in str(error)


def test_report_errors_keep_what_the_operator_needs() -> None:
    """The scrubbed message still names the count, the reason and the organizations."""
    error = ReportsFailed(["acme", "globex"], LEAKY)
    assert str(error) == (
        "2 report(s) failed after all retries (Stripe said: bad key sk_live_***; "
        "cache at redis://:***@cache.internal:6379/0): acme, globex"
    )
    assert error.organization_ids == ["acme", "globex"]


def test_scrub_masks_every_kind_of_secret() -> None:
    """Stripe keys of each kind and mode, webhook secrets and URL passwords are masked."""
    text = (
        "sk_test_abc rk_live_def pk_test_ghi whsec_jkl "
        "postgresql://app:pw@db:5432/x rediss://:p%40ss@h:6380 https://u:v@example.com/p"
    )
    assert scrub(text) == (
        "sk_test_*** rk_live_*** pk_test_*** whsec_*** "
        "postgresql://app:***@db:5432/x rediss://:***@h:6380 https://u:***@example.com/p"
    )


@pytest.mark.timeout(60)  # a hang guard, not a measurement: quadratic scrubbing takes minutes
def test_scrub_of_a_long_blob_is_unchanged() -> None:
    """A 1 MB run of letters (a blob in a traceback) is scanned once, not from every letter."""
    blob = "a" * 1_000_000 + "://"
    assert scrub(blob) == blob

"""Settings are read from the environment once and validated, naming the bad variable."""

from __future__ import annotations

import pytest

from sensormeter.errors import ConfigurationError
from sensormeter.settings import Settings, redact_url


class TestDefaults:
    def test_embedded_defaults(self) -> None:
        """With an empty environment, SQLite, local Redis and the documented names are used."""
        s = Settings.from_env({})
        assert s.redis_url == "redis://localhost:6379/0"
        assert s.database_url == "sqlite:///sensormeter.db"
        assert s.meter_event_name == "active_sensors"
        assert s.queue_name == "meter-reporting"
        assert s.billable_statuses == frozenset({"active", "trialing"})
        assert s.stripe_api_key is None

    def test_trial_alias_is_matched_with_trialing(self) -> None:
        """The seed's 'trial' status is matched wherever 'trialing' is billable."""
        assert Settings.from_env({}).billable_status_values == ["active", "trial", "trialing"]
        s = Settings.from_env({"SENSORMETER_BILLABLE_STATUSES": "active, trial ,past_due"})
        assert s.billable_statuses == frozenset({"active", "trialing", "past_due"})

    def test_variables_are_read(self) -> None:
        """Every documented variable reaches its field."""
        s = Settings.from_env(
            {
                "REDIS_URL": "rediss://:pw@example.com:6380/1",
                "DATABASE_URL": "postgresql://u:p@db/x",
                "STRIPE_API_KEY": "sk_test_abc",
                "STRIPE_API_BASE": "http://127.0.0.1:12111",
                "SENSORMETER_METER_EVENT_NAME": "sensors_v2",
                "SENSORMETER_QUEUE": "billing",
                "SENSORMETER_CHUNK_SIZE": "250",
            }
        )
        assert (s.redis_url, s.database_url, s.stripe_api_key) == (
            "rediss://:pw@example.com:6380/1",
            "postgresql://u:p@db/x",
            "sk_test_abc",
        )
        assert (s.stripe_api_base, s.meter_event_name, s.queue_name, s.chunk_size) == (
            "http://127.0.0.1:12111",
            "sensors_v2",
            "billing",
            250,
        )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("REDIS_URL", "http://localhost:6379"),
        ("DATABASE_URL", "mysql://localhost/x"),
        ("STRIPE_API_KEY", "not-a-key"),
        ("STRIPE_API_BASE", "localhost:12111"),
        ("SENSORMETER_METER_EVENT_NAME", "has spaces"),
        ("SENSORMETER_BILLABLE_STATUSES", "active,bogus"),
        ("SENSORMETER_BILLABLE_STATUSES", " , "),
        ("SENSORMETER_QUEUE", "a:b"),
        ("SENSORMETER_CHUNK_SIZE", "abc"),
        ("SENSORMETER_CHUNK_SIZE", "0"),
        ("SENSORMETER_MAX_RETRIES", "-1"),
        ("SENSORMETER_RETRY_BACKOFF_SECONDS", "soon"),
        ("SENSORMETER_STRIPE_TIMEOUT_SECONDS", "0"),
        ("SENSORMETER_USAGE_SOURCE", "no-colon"),
    ],
)
def test_bad_value_names_the_variable(variable: str, value: str) -> None:
    """A malformed value raises ConfigurationError whose message starts with the variable."""
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env({variable: value})
    assert info.value.variable == variable
    assert str(info.value).startswith(variable + ":")


def test_missing_key_is_a_clear_error() -> None:
    """Asking for the Stripe key when none is set names STRIPE_API_KEY."""
    with pytest.raises(ConfigurationError, match="STRIPE_API_KEY"):
        Settings.from_env({}).require_stripe_key()


def test_describe_hides_secrets() -> None:
    """The log-safe summary keeps no password and no key beyond its mode."""
    s = Settings.from_env(
        {"REDIS_URL": "redis://:hunter2@h:1/0", "STRIPE_API_KEY": "sk_live_secretvalue"}
    )
    text = repr(s.describe()) + repr(s)
    assert "hunter2" not in text and "secretvalue" not in text
    assert redact_url("postgresql://u:pw@h/db") == "postgresql://u:***@h/db"


def test_retry_intervals_grow_exponentially() -> None:
    """Backoff doubles from the base, one interval per retry."""
    s = Settings(max_retries=4, retry_backoff_seconds=5)
    assert s.retry_intervals() == [5, 10, 20, 40]


def test_webhook_secret_is_hidden_and_checked() -> None:
    """The webhook signing secret never shows in the settings' repr or in scrubbed log text."""
    from sensormeter.logs import scrub

    s = Settings.from_env({"STRIPE_WEBHOOK_SECRET": "whsec_abcdef123456"})
    assert "abcdef123456" not in repr(s)
    assert scrub("verifying with whsec_abcdef123456 failed") == "verifying with whsec_*** failed"
    with pytest.raises(ConfigurationError, match="STRIPE_WEBHOOK_SECRET"):
        Settings.from_env({"STRIPE_WEBHOOK_SECRET": "not-a-secret"})


def test_catchup_and_period_close_bounds() -> None:
    """Catch-up cannot reach past Stripe's 35 days; both settings name their variable."""
    assert Settings.from_env({"SENSORMETER_CATCHUP_HOURS": "0"}).catchup_hours == 0
    with pytest.raises(ConfigurationError, match="SENSORMETER_CATCHUP_HOURS.*35 days"):
        Settings.from_env({"SENSORMETER_CATCHUP_HOURS": "900"})
    with pytest.raises(ConfigurationError, match="SENSORMETER_PERIOD_CLOSE_MINUTES"):
        Settings.from_env({"SENSORMETER_PERIOD_CLOSE_MINUTES": "-1"})

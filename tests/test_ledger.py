"""Identifiers and organization ids: deterministic, bounded, validated."""

from __future__ import annotations

from datetime import datetime

import pytest

from sensormeter import ledger
from sensormeter.errors import InvalidOrganizationId
from sensormeter.hours import parse_hour

HOUR = datetime(2026, 11, 29, 4)


class TestHourlyIdentifier:
    def test_deterministic_for_org_event_and_hour(self) -> None:
        """The same organization, event name and UTC hour always give the same identifier."""
        a = ledger.hourly_identifier("acme", "active_sensors", HOUR)
        assert a == ledger.hourly_identifier("acme", "active_sensors", HOUR.replace(minute=59))
        assert a == "active_sensors-acme-2026-11-29T04"

    def test_differs_when_any_part_differs(self) -> None:
        """Another hour, organization or event name gives another identifier."""
        base = ledger.hourly_identifier("acme", "active_sensors", HOUR)
        assert base != ledger.hourly_identifier("acme", "active_sensors", HOUR.replace(hour=5))
        assert base != ledger.hourly_identifier("acme2", "active_sensors", HOUR)
        assert base != ledger.hourly_identifier("acme", "other", HOUR)

    def test_long_parts_stay_within_stripe_limit(self) -> None:
        """A long org id and event name still give a stable identifier of at most 100 chars."""
        org, event = "o" * 64, "e" * 100
        ident = ledger.hourly_identifier(org, event, HOUR)
        assert len(ident) <= 100
        assert ident == ledger.hourly_identifier(org, event, HOUR)
        assert ident != ledger.hourly_identifier(org, event, HOUR.replace(hour=5))


def test_on_demand_identifier_is_per_request() -> None:
    """Each on-demand request has its own identifier, distinct from the hourly one."""
    a = ledger.on_demand_identifier("acme", "active_sensors", "r1")
    assert a == ledger.on_demand_identifier("acme", "active_sensors", "r1")
    assert a != ledger.on_demand_identifier("acme", "active_sensors", "r2")
    assert a != ledger.hourly_identifier("acme", "active_sensors", HOUR)


@pytest.mark.parametrize("good", ["acme", "org_42", "7f3e-11aa", "a.b:c@d", "1"])
def test_valid_organization_ids(good: str) -> None:
    """Ordinary ids (slugs, numbers, UUIDs) are accepted unchanged."""
    assert ledger.validate_organization_id(good) == good


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        ("", "empty"),
        ("   ", "empty"),
        (None, "string"),
        (42, "string"),
        ("has space", "letters"),
        ("-leading", "letters"),
        ("x" * 65, "letters"),
        ("a/b", "letters"),
        ("new\nline", "letters"),
    ],
)
def test_invalid_organization_ids(bad: object, problem: str) -> None:
    """Empty, non-string and malformed ids raise InvalidOrganizationId naming the problem."""
    with pytest.raises(InvalidOrganizationId, match=problem):
        ledger.validate_organization_id(bad)


def test_parse_hour_rejects_garbage() -> None:
    """An hour label must be YYYY-MM-DDTHH."""
    assert parse_hour("2026-11-29T04") == HOUR
    with pytest.raises(ValueError, match="YYYY-MM-DDTHH"):
        parse_hour("2026-11-29 04:00")


def test_stored_errors_never_keep_a_key_or_a_password() -> None:
    """An error text quoting a Stripe key or a URL password is scrubbed before the ledger."""
    from sensormeter.meters.base import Outcome, SendResult

    row = ledger.LedgerRow(
        1, "acme", "id-1", "active_sensors", 3, "cus_acme", HOUR, "pending", 1, None, None
    )
    error = "AuthenticationError: Invalid API Key provided: sk_live_abcdef123 via redis://:pw9@h"
    ledger.apply_attempt(
        row, SendResult(Outcome.REJECTED, error=error), final_attempt=True, now=HOUR
    )
    assert row.last_error is not None
    assert "abcdef123" not in row.last_error and "pw9" not in row.last_error
    assert row.last_error.startswith("AuthenticationError: Invalid API Key provided: sk_live_***")

"""Input of any length is quoted back cut short: a 100 KB id never fills a terminal or a log."""

from __future__ import annotations

import subprocess

import pytest

from sensormeter.errors import (
    MAX_MESSAGE_CHARS,
    ConfigurationError,
    InvalidOrganizationId,
    SensormeterError,
    shown,
)
from sensormeter.ledger import validate_organization_id
from sensormeter.settings import Settings

from .conftest import SENSORMETER

HUGE = "a" * 100_000


def test_shown_keeps_short_values_whole_and_cuts_long_ones() -> None:
    """A short value is its repr; a long one is its start and its length."""
    assert shown("acme") == "'acme'"
    cut = shown(HUGE)
    assert cut.startswith("'aaaa") and cut.endswith("(100000 characters)")
    assert len(cut) < 120
    assert len(shown(list(range(10_000)))) < 120


def test_an_invalid_organization_id_is_named_by_its_start() -> None:
    """The error names the id's start and its length, not 100 KB."""
    with pytest.raises(InvalidOrganizationId) as caught:
        validate_organization_id(HUGE)
    message = str(caught.value)
    assert len(message) < 300
    assert "100000 characters" in message and "1-64 letters" in message


def test_every_error_message_is_bounded() -> None:
    """Whatever a message quotes (a driver's or Stripe's text), it stays short."""
    assert len(str(SensormeterError("x" * 50_000))) < MAX_MESSAGE_CHARS + 50
    error = ConfigurationError("SENSORMETER_TRANSPORT", "y" * 50_000)
    assert len(str(error)) < MAX_MESSAGE_CHARS + 50 and len(error.problem) < MAX_MESSAGE_CHARS + 50


def test_a_long_setting_is_cut_in_its_error() -> None:
    """A pasted-in 100 KB value of a setting is named, not echoed."""
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env({"SENSORMETER_TRANSPORT": "v" * 100_000})
    assert "SENSORMETER_TRANSPORT" in str(caught.value) and len(str(caught.value)) < 300


def test_the_cli_says_a_short_line_for_a_huge_id() -> None:
    """`sensormeter report <100 KB id>` prints one short line and exits 2, queueing nothing."""
    done = subprocess.run(
        [*SENSORMETER, "report", "b" * 100_000],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "REDIS_URL": "redis://127.0.0.1:1/0"},
    )
    assert done.returncode != 0
    assert len(done.stderr) < 400, done.stderr[:500]
    assert "100000 characters" in done.stderr

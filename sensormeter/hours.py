"""UTC hour labels: the hour of a report, as identifiers and job arguments spell it."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from .defaults import MAX_PAST_HOURS
from .errors import shown

# ASCII digits only: strptime also takes other scripts' digits ("２０２６-...").
_HOUR = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}", re.ASCII)
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", re.ASCII)


def hour_start(moment: datetime) -> datetime:
    """The start of the UTC hour that contains ``moment`` (naive UTC)."""
    return moment.replace(minute=0, second=0, microsecond=0)


def format_hour(hour: datetime) -> str:
    """The compact hour label used in identifiers and job arguments: ``2026-11-29T04``."""
    return hour.strftime("%Y-%m-%dT%H")


def parse_hour(label: str) -> datetime:
    """Parse ``YYYY-MM-DDTHH`` (as made by :func:`format_hour`) into a naive UTC datetime."""
    try:
        if not isinstance(label, str) or not _HOUR.fullmatch(label):
            raise ValueError(label)
        return datetime.strptime(label, "%Y-%m-%dT%H")
    except ValueError:
        raise ValueError(
            f"hour {shown(label)} is not of the form YYYY-MM-DDTHH (UTC, digits 0-9)"
        ) from None


def parse_hour_option(text: str) -> datetime:
    """Parse a command-line hour: ``YYYY-MM-DDTHH`` or a day ``YYYY-MM-DD`` (its first hour)."""
    stripped = text.strip()
    for pattern, form in ((_HOUR, "%Y-%m-%dT%H"), (_DAY, "%Y-%m-%d")):
        if not pattern.fullmatch(stripped):
            continue
        try:
            return datetime.strptime(stripped, form)
        except ValueError:
            break  # the right shape, but no such date or hour (2026-02-30, T24)
    raise ValueError(
        f"{shown(text)} is not a UTC hour YYYY-MM-DDTHH or a day YYYY-MM-DD (digits 0-9)"
    )


def parse_day(text: str) -> datetime:
    """Parse a command-line UTC day ``YYYY-MM-DD`` into its first hour (naive UTC)."""
    stripped = text.strip()
    try:
        if not _DAY.fullmatch(stripped):
            raise ValueError(text)
        return datetime.strptime(stripped, "%Y-%m-%d")
    except ValueError:
        raise ValueError(f"{shown(text)} is not a UTC day YYYY-MM-DD (digits 0-9)") from None


def check_reportable_hour(label: str, now: datetime) -> datetime:
    """Parse an hour and refuse one in the future or beyond Stripe's 35-day window."""
    hour = parse_hour(label)
    if hour > hour_start(now):
        raise ValueError(f"hour {label} is in the future (now is {format_hour(now)} UTC)")
    if hour < hour_start(now) - timedelta(hours=MAX_PAST_HOURS):
        raise ValueError(f"hour {label} is older than Stripe's 35-day window for meter events")
    return hour

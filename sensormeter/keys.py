"""Every Redis key sensormeter writes, in one place (arq keeps its prefixes in one module too).

All start with ``sensormeter:``; RQ's and rq-scheduler's own keys start with ``rq:``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

PREFIX = "sensormeter"


def waiting_key(queue_name: str, organization_id: str) -> str:
    """String: an on-demand report of the organization is queued and not yet started."""
    return f"{PREFIX}:{queue_name}:waiting:{organization_id}"


def close_queued_key(queue_name: str, organization_id: str, period_end: datetime) -> str:
    """String: a period-close report of the organization and period end is queued."""
    return f"{PREFIX}:{queue_name}:close:{organization_id}:{period_end:%Y%m%dT%H%M%S}"


def close_checked_key(queue_name: str) -> str:
    """String: the start of the last period-close check that completed."""
    return f"{PREFIX}:{queue_name}:close-checked"


def skipped_key(queue_name: str) -> str:
    """Hash: organization ids from the usage source that cannot be reported, with reasons."""
    return f"{PREFIX}:{queue_name}:skipped-ids"


def burst_lock_key(queue_name: str) -> str:
    """String: which burst worker moves due retries right now."""
    return f"{PREFIX}:{queue_name}:burst-lock"


def catchup_found_key(queue_name: str) -> str:
    """String (JSON): what the last catch-up found: missing organization-hours, window, when."""
    return f"{PREFIX}:{queue_name}:catchup-found"


def catchup_verified_key(queue_name: str, event_name: str) -> str:
    """String (JSON): the catch-up window's hours verified complete for a meter."""
    return f"{PREFIX}:{queue_name}:catchup-verified:{event_name}"


def unbilled_survey_key(queue_name: str) -> str:
    """String (JSON): unbilled organizations and sensors by reason, as the last survey found."""
    return f"{PREFIX}:{queue_name}:unbilled"


def retention_lock_key(queue_name: str) -> str:
    """String: a ledger prune is running (its token), so a second one waits for the next run."""
    return f"{PREFIX}:{queue_name}:retention-lock"


def retention_last_key(queue_name: str) -> str:
    """String (JSON): what the last ledger prune removed, when, and in how long."""
    return f"{PREFIX}:{queue_name}:retention-last"


KEY_PREFIX = f"{PREFIX}:ratelimit"


@dataclass(frozen=True)
class LimiterKeys:
    """The Redis keys of one shared limit (one per Stripe mode and transport)."""

    scope: str  # e.g. "live:v1"

    @property
    def state(self) -> str:
        """Hash: the adaptive rate, the last decrease and the last recovery step."""
        return f"{KEY_PREFIX}:{self.scope}:state"

    @property
    def schedule(self) -> str:
        """String: the GCRA's theoretical arrival time (Redis clock, milliseconds)."""
        return f"{KEY_PREFIX}:{self.scope}:tat"

    @property
    def in_flight(self) -> str:
        """String: the last report job's in-flight window (meters/inflight.py), for the next."""
        return f"{KEY_PREFIX}:{self.scope}:inflight"

    def accepted(self, bucket: int) -> str:
        """Counter: events Stripe answered (without a 429) in one BUCKET_SECONDS bucket."""
        return f"{KEY_PREFIX}:{self.scope}:accepted:{bucket}"

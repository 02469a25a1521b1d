"""Old import path (release 0.1) of the resend and sweep jobs, for jobs queued before an upgrade."""

from __future__ import annotations

from .tasks.recovery import resend_reports, sweep_stale_reports

__all__ = ["resend_reports", "sweep_stale_reports"]

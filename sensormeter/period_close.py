"""Old import path (release 0.1) of the period-close jobs, for jobs queued before an upgrade."""

from __future__ import annotations

from .tasks.period_close import close_periods, report_period_close

__all__ = ["close_periods", "report_period_close"]

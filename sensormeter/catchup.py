"""Old import path (release 0.1) of the catch-up job, for jobs queued before an upgrade."""

from __future__ import annotations

from .tasks.catchup import catch_up

__all__ = ["catch_up"]

"""Old import path (release 0.1) of the meter-client interface; see :mod:`sensormeter.meters`."""

from __future__ import annotations

from .meters.base import MeterClient, MeterEvent, Outcome, SendResult, classify_error

__all__ = ["MeterClient", "MeterEvent", "Outcome", "SendResult", "classify_error"]

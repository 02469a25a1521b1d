"""Report: which kind of report a run is, and what that fixes (identifiers, deadline, stamp).

Three kinds share one pipeline (count, record, send): the hourly report of a UTC hour, an
on-demand report asked for by ``enqueue_sensor_report``, and the report that closes a billing
period. Each knows its own identifiers, so the reporter, the ledger and the jobs take one
``Report`` instead of optional parameters. The identifier forms are part of the ledger's and
Stripe's history and never change (tests/test_shared_customers.py pins them).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from .hours import format_hour, parse_hour
from .ledger.identifiers import (
    customer_hourly_identifier,
    customer_request_identifier,
    hourly_identifier,
    on_demand_identifier,
)
from .models import MeterReport

# The ledger's ``kind`` column holds these.
HOURLY, ON_DEMAND, PERIOD_CLOSE = (
    MeterReport.HOURLY,
    MeterReport.ON_DEMAND,
    MeterReport.PERIOD_CLOSE,
)
KINDS = (HOURLY, ON_DEMAND, PERIOD_CLOSE)
_LAST_SECOND = timedelta(seconds=1)


def close_request_id(period_end: datetime) -> str:
    """The request id a period-close report's identifiers are built from: its period end."""
    return f"close-{period_end:%Y%m%dT%H%M%S}"


@dataclass(frozen=True)
class Report:
    """One report of some organizations: its kind and the hour, request or period it is for.

    Build it with :meth:`hourly`, :meth:`on_demand` or :meth:`period_close`.
    """

    kind: str
    hour: datetime | None = None  # hourly: the UTC hour (naive)
    request_id: str | None = None  # on demand: fixed when the report was queued
    period_end: datetime | None = None  # period close: the end of the billing period (naive)

    def __post_init__(self) -> None:
        wanted = {HOURLY: self.hour, ON_DEMAND: self.request_id, PERIOD_CLOSE: self.period_end}
        if self.kind not in wanted:
            raise ValueError(f"unknown kind of report {self.kind!r}; known: {', '.join(KINDS)}")
        if wanted[self.kind] is None:
            raise ValueError(f"a {self.kind} report needs its hour, request id or period end")

    @classmethod
    def hourly(cls, hour: datetime | str) -> Report:
        """The hourly report of a UTC hour (a datetime, or a ``YYYY-MM-DDTHH`` label)."""
        start = parse_hour(hour) if isinstance(hour, str) else hour
        return cls(HOURLY, hour=start.replace(minute=0, second=0, microsecond=0))

    @classmethod
    def on_demand(cls, request_id: str) -> Report:
        """A report asked for by the host app, with the request id fixed when it was queued."""
        return cls(ON_DEMAND, request_id=request_id)

    @classmethod
    def period_close(cls, period_end: datetime) -> Report:
        """The report that closes a billing period ending at ``period_end`` (naive UTC)."""
        return cls(PERIOD_CLOSE, period_end=period_end)

    @classmethod
    def from_job(cls, hour: str | None, request_id: str | None) -> Report:
        """The report a report job's arguments stand for (an hour label, or a request id)."""
        if hour is not None:
            return cls.hourly(hour)
        if request_id is None:
            raise ValueError("a report job needs an hour (hourly) or a request id (on demand)")
        return cls.on_demand(request_id)

    @property
    def _request(self) -> str:
        if self.period_end is not None:
            return close_request_id(self.period_end)
        assert self.request_id is not None  # guaranteed by __post_init__
        return self.request_id

    def identifier(self, organization_id: str, event_name: str) -> str:
        """An organization's identifier for this report (the same on every attempt)."""
        if self.hour is not None:
            return hourly_identifier(organization_id, event_name, self.hour)
        return on_demand_identifier(organization_id, event_name, self._request)

    def customer_identifier(self, customer: str, event_name: str) -> str:
        """The identifier of a shared Stripe customer's event for this report."""
        if self.hour is not None:
            return customer_hourly_identifier(customer, event_name, self.hour)
        return customer_request_identifier(customer, event_name, self._request)

    @property
    def deadline(self) -> datetime | None:
        """The last moment the report may stand for; a later run is stamped there instead."""
        if self.hour is not None:
            return self.hour + timedelta(hours=1) - _LAST_SECOND
        if self.period_end is not None:
            return self.period_end - _LAST_SECOND
        return None

    @property
    def label(self) -> str:
        """A short text naming the report, for logs: the hour, the request or the period end."""
        if self.hour is not None:
            return format_hour(self.hour)
        if self.period_end is not None:
            return f"close {self.period_end.isoformat()}"
        return f"request {self.request_id}"

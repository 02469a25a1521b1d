"""One bad event costs only itself: whatever breaks, the rest of the chunk goes on.

Found by an attack: an identifier with a newline made http.client raise ValueError, which
escaped the transport, so no attempt of the chunk was recorded and 500 rows stayed pending
without a reason, hour after hour. A proxy's latin-1 error page did the same.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import timedelta

import peewee
import pytest

from sensormeter import ledger
from sensormeter.errors import ReportsFailed, RetryableReportError
from sensormeter.hours import format_hour, hour_start
from sensormeter.meters.base import MeterEvent, SendResult
from sensormeter.models import MeterReport, utcnow
from sensormeter.report import Report
from sensormeter.reporter import Reporter
from sensormeter.runtime import Runtime
from sensormeter.tasks.catchup import find_gaps
from sensormeter.tasks.report import process_meter_report
from sensormeter.usage import InMemoryUsageSource

from .factories import make_org

HOUR = format_hour(hour_start(utcnow()))


@pytest.fixture(autouse=True)
def current_hour(monkeypatch: pytest.MonkeyPatch) -> None:
    """HOUR is the hour each test runs in, so a suite that crosses the top of an hour passes."""
    monkeypatch.setattr(sys.modules[__name__], "HOUR", format_hour(hour_start(utcnow())))


LATIN1_PAGE = "<html><body><h1>502 Bad Gateway</h1><p>Passerelle défaillante</p></body></html>"


def pending_row(org: str, identifier: str) -> int:
    """A pending hourly row written straight to the ledger (as a host's bad data could be)."""
    now = utcnow()
    return int(
        MeterReport.insert(
            organization_id=org,
            event_name="active_sensors",
            value=3,
            identifier=identifier,
            kind=MeterReport.HOURLY,
            period_hour=hour_start(now),
            stripe_customer_id=f"cus_{org}",
            measured_at=now.replace(microsecond=0),
            status=MeterReport.PENDING,
        ).execute()
    )


@pytest.mark.integration
class TestOverHttp:
    def test_a_poisoned_identifier_costs_only_its_own_row(
        self, runtime: Runtime, emulator: object
    ) -> None:
        """A header http.client refuses: that row is pending with a reason, the others sent."""
        good = [pending_row(f"g{i}", f"active_sensors-g{i}-{HOUR}") for i in range(4)]
        bad = pending_row("bad", f"active_sensors-bad-{HOUR}\n")
        reporter = Reporter(runtime.source, runtime.meter, "active_sensors")
        result = reporter.resend(runtime.database, [*good, bad], final_attempt=False)
        rows = {r.id: r for r in MeterReport.select()}
        assert {rows[i].status for i in good} == {"sent"}
        assert rows[bad].status == "pending" and rows[bad].attempts == 1
        assert "ValueError" in (rows[bad].last_error or "")
        assert sorted(e.identifier for e in emulator.events()) == sorted(  # type: ignore[attr-defined]
            rows[i].identifier for i in good
        )
        with pytest.raises(RetryableReportError):
            result.raise_for_retry()

    def test_a_proxy_page_in_latin1_is_a_retryable_answer(
        self, runtime: Runtime, emulator: object
    ) -> None:
        """A 502 whose body is not UTF-8 fails that event, visibly and retryably; then heals."""
        for org in ("p1", "p2", "p3"):
            make_org(org, active=2)
        emulator.inject_page(502, LATIN1_PAGE.encode("latin-1"))  # type: ignore[attr-defined]
        # Outside RQ the job is its own last attempt: the row ends failed (never rejected).
        with pytest.raises(ReportsFailed):
            process_meter_report(["p1", "p2", "p3"], hour=HOUR)
        rows = list(MeterReport.select().order_by(MeterReport.organization_id))
        assert sorted(r.status for r in rows) == ["failed", "sent", "sent"]
        [waiting] = [r for r in rows if r.status == "failed"]
        assert "APIError" in (waiting.last_error or "") and "502" in (waiting.last_error or "")
        reporter = Reporter(runtime.source, runtime.meter, "active_sensors")
        reporter.resend(runtime.database, [waiting.id])  # what retry-failed queues
        assert {r.status for r in MeterReport.select()} == {"sent"}
        assert len(emulator.events()) == 3  # type: ignore[attr-defined]


class RaisingMeter:
    """A meter client with a bug: it raises instead of answering."""

    def send(self, event: MeterEvent) -> SendResult:
        raise KeyError("boom")

    def send_many(self, events: Sequence[MeterEvent]) -> list[SendResult]:
        raise KeyError("boom")


class TestAnyException:
    def test_a_raising_meter_client_leaves_every_row_pending_with_its_reason(
        self, database: peewee.Database
    ) -> None:
        """No row stays pending without a reason after its attempt, whatever the client does."""
        source = InMemoryUsageSource({"a": "cus_a", "b": "cus_b"}, {"a": 1, "b": 2})
        result = Reporter(source, RaisingMeter(), "active_sensors").run(
            database, ["a", "b"], Report.hourly(HOUR), final_attempt=False
        )
        assert result.retryable == ["a", "b"]
        rows = list(MeterReport.select())
        assert {(r.status, r.attempts) for r in rows} == {("pending", 1)}
        assert all("KeyError" in (r.last_error or "") for r in rows)

    def test_on_the_last_attempt_they_end_failed_never_rejected(
        self, database: peewee.Database
    ) -> None:
        """An unexpected error is retryable: after the retries it is failed, so it is resent."""
        source = InMemoryUsageSource({"a": "cus_a"}, {"a": 1})
        Reporter(source, RaisingMeter(), "active_sensors").run(database, ["a"], Report.hourly(HOUR))
        assert MeterReport.get().status == "failed"


class TestStalePending:
    def test_a_pending_row_no_job_will_finish_is_not_covered(
        self, database: peewee.Database
    ) -> None:
        """Catch-up treats a long-untouched pending row as missing, a fresh one as covered."""
        hour = hour_start(utcnow()) - timedelta(hours=1)
        earlier = hour - timedelta(hours=1)
        for org in ("fresh", "stale"):
            for h in (earlier, hour):
                pending_row(org, ledger.hourly_identifier(org, "active_sensors", h))
                MeterReport.update(period_hour=h).where(
                    MeterReport.identifier == ledger.hourly_identifier(org, "active_sensors", h)
                ).execute()
        MeterReport.update(status="sent").where(MeterReport.period_hour == earlier).execute()
        long_ago = utcnow() - timedelta(hours=3)
        MeterReport.update(updated_at=long_ago).where(
            (MeterReport.organization_id == "stale") & (MeterReport.period_hour == hour)
        ).execute()
        cutoff = utcnow() - timedelta(hours=1)
        gaps = find_gaps("active_sensors", ["fresh", "stale"], [earlier, hour], cutoff)
        assert gaps == {hour: ["stale"]}
        assert find_gaps("active_sensors", ["fresh", "stale"], [earlier, hour]) == {}

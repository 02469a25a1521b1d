"""Period close: a fresh count lands inside the period's final minutes, once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sensormeter.emulator import StripeEmulator
from sensormeter.jobs import make_queue
from sensormeter.models import MeterReport, Sensor, Subscription, utcnow
from sensormeter.period_close import close_periods
from sensormeter.runtime import Runtime

from .factories import make_org
from .test_jobs import work


def set_period_end(org: str, end: datetime) -> None:
    Subscription.update(current_period_end=end).where(
        Subscription.organization == org  # type: ignore[comparison-overlap]
    ).execute()


def epoch(moment: datetime) -> float:
    return moment.replace(tzinfo=UTC).timestamp()


def test_period_ending_soon_gets_one_fresh_report_inside_it(
    runtime: Runtime, emulator: StripeEmulator
) -> None:
    """A period ending in 5 minutes: the current count is reported now, once, before the end."""
    end = utcnow().replace(microsecond=0) + timedelta(minutes=5)
    make_org("acme", active=3)
    make_org("later", active=1)
    set_period_end("acme", end)
    set_period_end("later", end + timedelta(hours=3))
    assert close_periods() == {"organizations": 1, "jobs": 1}
    Sensor.create(organization="acme")  # the count is read when the job runs
    work(runtime)
    [event] = emulator.events()
    assert (event.customer, event.value) == ("cus_acme", 4)
    assert event.timestamp < epoch(end)
    row = MeterReport.get()
    assert (row.kind, row.status) == (MeterReport.PERIOD_CLOSE, MeterReport.SENT)
    # The checks of the following minutes find the report and queue nothing.
    assert close_periods() == {"organizations": 0, "jobs": 0}
    work(runtime)
    assert len(emulator.events()) == 1


def test_a_queued_close_report_is_not_queued_again(runtime: Runtime) -> None:
    """Before its job runs, the next minute's check does not queue a second job."""
    make_org("acme", active=1)
    set_period_end("acme", utcnow() + timedelta(minutes=3))
    assert close_periods()["jobs"] == 1
    assert close_periods()["jobs"] == 0
    assert make_queue(runtime.settings, runtime.redis).count == 1


def test_a_missed_close_is_stamped_at_the_period_end_with_the_count_then(
    runtime: Runtime, emulator: StripeEmulator
) -> None:
    """The scheduler was down at the end: the report stands for the period's last second."""
    end = utcnow().replace(microsecond=0) - timedelta(minutes=20)
    make_org("acme")
    Sensor.create(organization="acme", created_at=end - timedelta(days=3))
    Sensor.create(organization="acme", created_at=end - timedelta(days=3))
    Sensor.create(organization="acme", created_at=end + timedelta(minutes=5))  # next period
    set_period_end("acme", end)
    close_periods()
    work(runtime)
    [event] = emulator.events()
    assert event.timestamp == epoch(end) - 1
    assert event.value == 2


def test_non_billable_and_turned_off(runtime: Runtime, emulator: StripeEmulator) -> None:
    """A canceled subscription gets no close report; SENSORMETER_PERIOD_CLOSE_MINUTES=0 none."""
    make_org("gone", status="canceled", active=2)
    set_period_end("gone", utcnow() + timedelta(minutes=2))
    assert close_periods()["organizations"] == 0
    make_org("acme", active=2)
    set_period_end("acme", utcnow() + timedelta(minutes=2))
    object.__setattr__(runtime, "settings", runtime.settings.with_overrides(period_close_minutes=0))
    assert close_periods() == {"organizations": 0, "jobs": 0}


def test_a_malformed_id_from_a_host_source_is_skipped(
    runtime: Runtime, emulator: StripeEmulator
) -> None:
    """A host source's bad organization id is logged and skipped; the others are reported."""
    from sensormeter.usage import InMemoryUsageSource

    end = utcnow() + timedelta(minutes=4)
    source = InMemoryUsageSource(
        {"acme": "cus_acme", "bad id!": "cus_bad"},
        {"acme": 7, "bad id!": 1},
        period_ends={"acme": end, "bad id!": end},
    )
    object.__setattr__(runtime, "source", source)
    assert close_periods() == {"organizations": 1, "jobs": 1}
    work(runtime)
    assert [(e.customer, e.value) for e in emulator.events()] == [("cus_acme", 7)]

"""Period close: a fresh count lands inside the period's final minutes, once."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sensormeter import keys, ledger
from sensormeter.emulator import StripeEmulator
from sensormeter.errors import ConfigurationError
from sensormeter.hours import hour_start
from sensormeter.models import MeterReport, Sensor, Subscription, utcnow
from sensormeter.report import close_request_id
from sensormeter.runtime import Runtime
from sensormeter.settings import Settings
from sensormeter.tasks import period_close as PC
from sensormeter.tasks.period_close import close_periods
from sensormeter.tasks.queue import make_queue
from sensormeter.usage import InMemoryUsageSource

from .conftest import SENSORMETER, cli_env, count_queries
from .factories import make_org
from .test_jobs import work


def set_period_end(org: str, end: datetime) -> None:
    Subscription.update(current_period_end=end).where(
        Subscription.organization == org  # type: ignore[comparison-overlap]
    ).execute()


def epoch(moment: datetime) -> float:
    return moment.replace(tzinfo=UTC).timestamp()


def reported(org: str, at: datetime) -> None:
    """A sent hourly ledger row measured at ``at``: sensormeter reported ``org`` then."""
    hour = hour_start(at)
    MeterReport.create(
        organization_id=org,
        event_name="active_sensors",
        value=1,
        identifier=ledger.hourly_identifier(org, "active_sensors", hour),
        period_hour=hour,
        stripe_customer_id=f"cus_{org}",
        measured_at=at,
        status=MeterReport.SENT,
        sent_at=at,
    )


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
    reported("acme", end - timedelta(minutes=30))
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


def set_period(org: str, start: datetime, end: datetime) -> None:
    Subscription.update(current_period_start=start, current_period_end=end).where(
        Subscription.organization == org  # type: ignore[comparison-overlap]
    ).execute()


def sensors_over_time(org: str, end: datetime) -> None:
    """Sensors whose count is 3 at ``end`` (it was 4 before, is 5 after): a changing fleet."""
    long_ago = end - timedelta(days=3)
    for _ in range(3):
        Sensor.create(organization=org, created_at=long_ago)
    Sensor.create(organization=org, created_at=long_ago, deleted_at=end - timedelta(minutes=40))
    Sensor.create(organization=org, created_at=end + timedelta(minutes=10))  # next period
    Sensor.create(organization=org, created_at=end + timedelta(minutes=50))


def test_a_period_that_ended_hours_ago_during_an_outage_is_closed_at_its_end(
    runtime: Runtime, emulator: StripeEmulator
) -> None:
    """A period end 3 hours old (scheduler down) is reported at its last second, count then."""
    end = utcnow().replace(microsecond=0) - timedelta(hours=3, minutes=7)
    make_org("acme")
    reported("acme", end - timedelta(hours=2))
    sensors_over_time("acme", end)
    set_period_end("acme", end)
    assert close_periods() == {"organizations": 1, "jobs": 1}
    work(runtime)
    [event] = emulator.events()
    assert (event.identifier, event.timestamp, event.value) == (
        ledger.on_demand_identifier("acme", "active_sensors", f"close-{end:%Y%m%dT%H%M%S}"),
        epoch(end) - 1,
        3,
    )
    assert close_periods()["organizations"] == 0


def test_a_renewed_subscription_is_closed_at_its_previous_end(
    runtime: Runtime, emulator: StripeEmulator
) -> None:
    """The renewal moved current_period_end on: current_period_start still gives the end."""
    end = utcnow().replace(microsecond=0) - timedelta(hours=2, minutes=13)
    make_org("acme")
    reported("acme", end - timedelta(hours=1))
    sensors_over_time("acme", end)
    set_period("acme", end, end + timedelta(days=30))
    assert close_periods() == {"organizations": 1, "jobs": 1}
    work(runtime)
    [event] = emulator.events()
    assert (event.timestamp, event.value) == (epoch(end) - 1, 3)


def test_a_new_subscription_start_is_no_period_end(runtime: Runtime) -> None:
    """A start is closed only for an organization the ledger has an earlier row for."""
    start = utcnow().replace(microsecond=0) - timedelta(minutes=30)
    for org in ("fresh", "renewed"):
        make_org(org, active=2)
        set_period(org, start, start + timedelta(days=30))
    reported("renewed", start - timedelta(minutes=20))
    reported("fresh", start + timedelta(minutes=5))  # reported since it subscribed: no matter
    assert close_periods()["organizations"] == 1
    [job] = make_queue(runtime.settings, runtime.redis).jobs
    assert job.args[0] == ["renewed"]


def test_a_short_period_gets_both_of_its_ends(runtime: Runtime, emulator: StripeEmulator) -> None:
    """A daily period not yet renewed has two ends in the window: each is closed."""
    end = utcnow().replace(microsecond=0) - timedelta(hours=2)
    start = end - timedelta(days=1)
    make_org("daily")
    reported("daily", start - timedelta(hours=3))
    Sensor.create(organization="daily", created_at=start - timedelta(days=3))
    Sensor.create(organization="daily", created_at=start + timedelta(hours=2))
    set_period("daily", start, end)
    assert close_periods() == {"organizations": 2, "jobs": 2}
    work(runtime)
    stamps = sorted((e.timestamp, e.value) for e in emulator.events())
    assert stamps == [(epoch(start) - 1, 1), (epoch(end) - 1, 2)]


class RecordingSource(InMemoryUsageSource):
    """The in-memory twin, noting the window of each periods_ending call."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.windows: list[tuple[datetime, datetime]] = []

    def periods_ending(self, after: datetime, until: datetime) -> dict[str, list[datetime]]:
        self.windows.append((after, until))
        return super().periods_ending(after, until)


def test_each_check_looks_back_to_the_previous_one(runtime: Runtime) -> None:
    """The first check covers the catch-up window; later ones start at the previous check."""
    source = RecordingSource({"acme": "cus_acme"})
    object.__setattr__(runtime, "source", source)
    before = utcnow()
    close_periods()
    close_periods()
    (first_after, first_until), (second_after, _) = source.windows
    assert before - timedelta(hours=48) <= first_after <= utcnow() - timedelta(hours=48)
    assert first_until >= before + timedelta(minutes=10)
    assert before - PC.CLOCK_MARGIN <= second_after <= utcnow() - PC.CLOCK_MARGIN
    runtime.redis.delete(keys.close_checked_key(runtime.settings.queue_name))  # Redis lost its data
    object.__setattr__(runtime, "settings", runtime.settings.with_overrides(catchup_hours=0))
    before = utcnow()
    close_periods()
    hour = timedelta(hours=1)
    assert before - hour <= source.windows[-1][0] <= utcnow() - hour


def test_a_check_with_nothing_due_is_one_query(runtime: Runtime) -> None:
    """On the default tables, a check that finds nothing runs one SELECT."""
    make_org("acme", active=1)
    set_period("acme", utcnow() - timedelta(days=10), utcnow() + timedelta(days=20))
    with count_queries() as counter:
        assert close_periods() == {"organizations": 0, "jobs": 0}
    assert counter.selects == 1


def test_a_queued_close_outlives_the_look_back(runtime: Runtime) -> None:
    """Workers down: a queued close of an end 40 hours old is not queued again meanwhile."""
    make_org("acme", active=1)
    end = utcnow().replace(microsecond=0) - timedelta(hours=40)
    reported("acme", end - timedelta(hours=1))
    set_period("acme", end, end + timedelta(days=30))
    assert close_periods()["jobs"] == 1
    settings = runtime.settings
    ttl = runtime.redis.ttl(keys.close_queued_key(settings.queue_name, "acme", end))
    assert ttl > (PC.look_back(settings) - timedelta(hours=40)).total_seconds()
    runtime.redis.delete(keys.close_checked_key(settings.queue_name))  # full look-back again
    assert close_periods()["jobs"] == 0
    assert make_queue(settings, runtime.redis).count == 1


def close_row(org: str, end: datetime, status: str) -> None:
    """A close report of ``end`` counted after it (stamped a second before), not delivered."""
    MeterReport.create(
        organization_id=org,
        event_name="active_sensors",
        value=4,
        identifier=ledger.on_demand_identifier(org, "active_sensors", close_request_id(end)),
        kind=MeterReport.PERIOD_CLOSE,
        stripe_customer_id=f"cus_{org}",
        measured_at=end - timedelta(seconds=1),
        status=status,
    )


def test_closes_past_the_invoice_grace_are_listed(
    settings: Settings, runtime: Runtime, emulator: StripeEmulator
) -> None:
    """Closes delivered after end + grace, or undelivered past it, are listed, also by status."""
    now = utcnow().replace(microsecond=0)
    late_end = now - timedelta(hours=3)
    make_org("late")
    for _ in range(5):
        Sensor.create(organization="late", created_at=late_end - timedelta(days=1))
    reported("late", late_end - timedelta(hours=1))
    set_period_end("late", late_end)
    make_org("ontime", active=2)
    set_period_end("ontime", now + timedelta(minutes=5))
    assert close_periods()["organizations"] == 2
    work(runtime)
    assert len(emulator.events()) == 2
    close_row("stuck", now - timedelta(hours=2), MeterReport.FAILED)
    close_row("recent", now - timedelta(minutes=30), MeterReport.PENDING)  # grace not over
    late = PC.late_closes(runtime.database, 1, utcnow())
    assert [(c.organization_id, c.period_end, c.value, c.status) for c in late] == [
        ("stuck", now - timedelta(hours=2), 4, MeterReport.FAILED),
        ("late", late_end, 5, MeterReport.SENT),
    ]
    assert late[1].sent_at is not None and late[1].sent_at > late_end + timedelta(hours=1)
    assert PC.late_closes(runtime.database, 72, utcnow()) == []
    done = subprocess.run(
        [*SENSORMETER, "status"], env=cli_env(settings), capture_output=True, text=True
    )
    assert done.returncode == 1, done.stderr  # a failed row, nothing scheduled: problems
    lines = done.stdout.splitlines()
    assert any(line.startswith("period closes after the 1 h invoice grace: 2 (") for line in lines)
    listed = [line.split(": ", 1)[1] for line in lines if line.startswith("  late close: ")]
    stuck_end = now - timedelta(hours=2)
    assert listed[0] == f"stuck period end {stuck_end} UTC value 4: not delivered (failed)"
    assert listed[1].startswith(f"late period end {late_end} UTC value 5: sent ")


def test_the_period_end_is_found_from_a_digest_identifier() -> None:
    """A long id's close identifier is a digest: the end is found by matching it."""
    org, end = "o" * 64, datetime(2026, 11, 29, 5, 0, 0)
    identifier = ledger.on_demand_identifier(org, "active_sensors", close_request_id(end))
    assert identifier.startswith("sm-")
    for stamp in (end - timedelta(seconds=1), end - timedelta(minutes=7, seconds=3)):
        assert PC.period_end_of(org, "active_sensors", identifier, stamp) == end


def test_the_invoice_grace_setting() -> None:
    """SENSORMETER_INVOICE_GRACE_HOURS: 1 by default, 0 to 72 whole hours, a bad value named."""
    assert Settings().invoice_grace_hours == 1
    assert Settings.from_env({"SENSORMETER_INVOICE_GRACE_HOURS": "72"}).invoice_grace_hours == 72
    for bad in ("73", "-1", "1.5", "one"):
        with pytest.raises(ConfigurationError, match="^SENSORMETER_INVOICE_GRACE_HOURS: "):
            Settings.from_env({"SENSORMETER_INVOICE_GRACE_HOURS": bad})


def test_a_malformed_period_end_from_a_host_source_is_skipped(
    runtime: Runtime, emulator: StripeEmulator
) -> None:
    """A host source's end that is no datetime is logged and skipped; the others are closed."""

    class HostSource(InMemoryUsageSource):
        def periods_ending(self, after: datetime, until: datetime) -> dict[str, Any]:
            return {"acme": utcnow() + timedelta(minutes=4), "odd": "tomorrow"}

    source = HostSource({"acme": "cus_acme", "odd": "cus_odd"}, {"acme": 7, "odd": 1})
    object.__setattr__(runtime, "source", source)
    assert close_periods() == {"organizations": 1, "jobs": 1}
    work(runtime)
    assert [(e.customer, e.value) for e in emulator.events()] == [("cus_acme", 7)]
